"""The outputs of a configuration, and exactly what each one depends on (its identity).

- manifests: the corpus (the mini corpus' synthesis recipe, or the corpus folder) and `prepare`
- tokenizer: the manifests, and `tokenizer`
- cmvn: the manifests, the feature settings it reads, and the seed of its sample
- model (exp/): manifests, tokenizer, cmvn, the model it starts from (`init_from`), and `model`, `quant`,
  the effective `train` (with `qat_train` for a quantized system), `features`, `loader`, `seed`. Not
  `train.log_every`, `keep_checkpoints`, `checkpoint_every`: they change logs and disk use, not the model.
- decode: the model and its data, the split, the method and that method's settings
- chip (memsim/): the model, the crossbar configuration, the programming seed and per-layer ADC settings
- chip decode: the chip, the model and its data, the instance, the split, the method and its settings
"""

from dataclasses import asdict
from pathlib import Path

from asr.data.features import CMVN_FILE
from asr.data.loader import DataFiles
from asr.files import file_identity
from asr.identity import chip_identity, identity
from asr.records import Output
from asr.settings import FLOAT, RecipeSettings
from asr.tokenizer import TOKENIZER_FILE

NOT_IN_MODEL_IDENTITY = ("log_every", "keep_checkpoints", "checkpoint_every")


def manifests(recipe: RecipeSettings) -> Output:
    return Output(
        "prepare", "manifests", recipe.data.name, {"data": recipe.data.identity(), "prepare": asdict(recipe.prepare)}
    )


def tokenizer(recipe: RecipeSettings) -> Output:
    units = recipe.tokenizer
    label = f"{units.model_type}{units.vocab_size}"
    return Output("tokenizer", "tokenizer", label, asdict(units), {"manifests": manifests(recipe)})


def cmvn(recipe: RecipeSettings) -> Output:
    features = recipe.features
    return Output(
        "cmvn",
        "cmvn",
        f"fbank{features.num_mel_bins}",
        {"num_mel_bins": features.num_mel_bins, "cmvn_segments": features.cmvn_segments, "seed": recipe.seed},
        {"manifests": manifests(recipe)},
    )


def data_inputs(recipe: RecipeSettings) -> dict[str, Output]:
    return {"manifests": manifests(recipe), "tokenizer": tokenizer(recipe), "cmvn": cmvn(recipe)}


def data_files(recipe: RecipeSettings) -> DataFiles:
    """The prepared data of this configuration: its manifests, tokenizer and CMVN under work_dir."""
    root = recipe.work_dir_path
    return DataFiles(
        root / manifests(recipe).relpath,
        root / tokenizer(recipe).relpath / TOKENIZER_FILE,
        root / cmvn(recipe).relpath / CMVN_FILE,
    )


def _checkpoint_identity(recipe: RecipeSettings, path: str) -> dict:
    """A checkpoint's part of a model's identity (asr.files.file_identity): its content, and its path relative to
    work_dir when it lies there (the uniform model an allocation fine-tunes from), so that a moved or copied work
    dir keeps its models."""
    found = file_identity(path)
    root = recipe.work_dir_path.resolve()
    if Path(found["path"]).is_relative_to(root):
        found["path"] = str(Path(found["path"]).relative_to(root))
    return found


def model_output(recipe: RecipeSettings, quantized: bool) -> Output:
    """The float model (quantized=False) or the configured quantized system."""
    run = recipe.train_settings(quantized)
    train = {k: v for k, v in asdict(run).items() if k not in (*NOT_IN_MODEL_IDENTITY, "init_from", "seed")}
    inputs = data_inputs(recipe)
    init: str | dict | None = FLOAT
    if run.init_from == FLOAT:
        inputs["init"] = model_output(recipe, quantized=False)
    else:
        init = _checkpoint_identity(recipe, run.init_from) if run.init_from else None
    settings = {
        "model": identity("model", asdict(recipe.model)),
        "quant": identity("quant", asdict(recipe.quant_config(quantized))) if quantized else None,  # none when float
        "train": train,
        "init_from": init,
        "features": asdict(recipe.features),
        "loader": asdict(recipe.loader),
        "seed": recipe.train_seed(quantized),
    }
    label = f"{recipe.model.name}-{recipe.system_name(quantized)}"
    output = Output("train" if quantized else "train_float", "exp", label, settings, inputs)
    baseline = output if not quantized else model_output(recipe, quantized=False)
    return Output(
        output.stage,
        output.kind,
        output.label,
        output.settings,
        output.inputs,
        notes={"system": recipe.system_name(quantized), "baseline": baseline.relpath},
    )


def systems(recipe: RecipeSettings) -> list[Output]:
    """The float model, and the configured system if it is quantized."""
    return [model_output(recipe, False)] + ([model_output(recipe, True)] if recipe.quantized else [])


def _decode_settings(recipe: RecipeSettings, split: str, method: str) -> dict:
    return {"split": split, "method": method, **recipe.decode.method_settings(method)}


def decodes(recipe: RecipeSettings, trained: Output) -> list[Output]:
    """Every split and method of `decode` for one trained model."""
    inputs = {"model": trained, **data_inputs(recipe)}
    return [
        Output("decode", "decode", method, _decode_settings(recipe, split, method), inputs, (trained.name, split))
        for split in recipe.decode.splits
        for method in recipe.decode.methods
    ]


def chip_output(recipe: RecipeSettings, trained: Output) -> Output:
    """The crossbar configuration that holds a quantized model (its summary: cells, tiles, ADC conversions)."""
    chip_settings = recipe.memsim
    extras = {
        "kinds": list(chip_settings.kinds),
        "adc_auto": {"budget_bits": chip_settings.adc_budget_bits, "coverage": chip_settings.adc_coverage}
        if chip_settings.adc == "auto"
        else None,
        "layer_adc": dict(chip_settings.layer_adc),
        "layer_bits": dict(recipe.quant.layer_bits),  # the model's mixed precision, mapped layer by layer
        # the tuning batches come from the training loader's settings
        "tune": {
            "steps": chip_settings.tune_steps,
            "lr": chip_settings.tune_lr,
            "loader": asdict(recipe.loader),
            "seed": recipe.seed,
        }
        if chip_settings.tune_steps
        else None,
        "read_passes": chip_settings.read_passes,
    }
    settings = {
        "crossbar": identity("crossbar", asdict(recipe.chip_config())),
        "seed": recipe.chip_seed,
        "precycle_per_instance": chip_settings.precycle_per_instance,
        **chip_identity(extras),
    }
    return Output("memsim", "memsim", recipe.memsim.name, settings, {"model": trained}, (trained.name,))


def sensitivity_output(recipe: RecipeSettings, trained: Output, programmed: Output) -> Output:
    """The per-layer sensitivity table of a chip configuration (asr.sensitivity), on the dev split."""
    measured = recipe.sensitivity
    settings = {"weight_bits": measured.weight_bits, "adcs": measured.adcs, "seconds": measured.seconds}
    inputs = {"chip": programmed, "model": trained, **data_inputs(recipe)}
    return Output("sensitivity", "sensitivity", recipe.memsim.name, settings, inputs, (trained.name, programmed.name))


def chip_decodes(recipe: RecipeSettings, trained: Output, programmed: Output) -> list[Output]:
    """Every instance, split and method of a chip configuration."""
    inputs = {"chip": programmed, "model": trained, **data_inputs(recipe)}
    return [
        Output(
            "memsim",
            "memsim",
            method,
            {"instance": k, **_decode_settings(recipe, split, method)},
            inputs,
            (trained.name, programmed.name, f"instance-{k}", split),
        )
        for k in range(recipe.memsim.instances)
        for split in recipe.decode.splits
        for method in recipe.decode.methods
    ]
