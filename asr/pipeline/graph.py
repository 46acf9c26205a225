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
from typing import Any

from asr.data.loader import DataFiles
from asr.files import file_identity
from asr.pipeline.outputs import Output
from asr.quant import QuantConfig
from asr.settings import FLOAT, RecipeSettings

NOT_IN_MODEL_IDENTITY = ("log_every", "keep_checkpoints", "checkpoint_every")
TOKENIZER_FILE, CMVN_FILE = "sp.model", "cmvn.json"
SUMMARY_FILE = "summary.json"  # a chip configuration's cells, tiles and layer errors (memsim stage)


def manifests(s: RecipeSettings) -> Output:
    return Output("prepare", "manifests", s.data.name, {"data": s.data.identity(), "prepare": asdict(s.prepare)})


def tokenizer(s: RecipeSettings) -> Output:
    t = s.tokenizer
    return Output("tokenizer", "tokenizer", f"{t.model_type}{t.vocab_size}", asdict(t), {"manifests": manifests(s)})


def cmvn(s: RecipeSettings) -> Output:
    f = s.features
    return Output(
        "cmvn",
        "cmvn",
        f"fbank{f.num_mel_bins}",
        {"num_mel_bins": f.num_mel_bins, "cmvn_segments": f.cmvn_segments, "seed": s.seed},
        {"manifests": manifests(s)},
    )


def data_inputs(s: RecipeSettings) -> dict[str, Output]:
    return {"manifests": manifests(s), "tokenizer": tokenizer(s), "cmvn": cmvn(s)}


def data_files(s: RecipeSettings) -> DataFiles:
    """The prepared data of this configuration: its manifests, tokenizer and CMVN under work_dir."""
    root = s.work_dir_path
    return DataFiles(
        root / manifests(s).relpath, root / tokenizer(s).relpath / TOKENIZER_FILE, root / cmvn(s).relpath / CMVN_FILE
    )


def model(s: RecipeSettings, quantized: bool) -> Output:
    """The float model (quantized=False) or the configured quantized system."""
    run = s.train_settings(quantized)
    train = {k: v for k, v in asdict(run).items() if k not in NOT_IN_MODEL_IDENTITY and k != "init_from"}
    inputs = data_inputs(s)
    init: str | dict | None = FLOAT
    if run.init_from == FLOAT:
        inputs["init"] = model(s, quantized=False)
    else:
        init = file_identity(run.init_from) if run.init_from else None
    settings = {
        "model": _model_identity(s),
        "quant": _quant_identity(s.quant_config(quantized)) if quantized else None,  # none for a float model
        "train": train,
        "init_from": init,
        "features": asdict(s.features),
        "loader": asdict(s.loader),
        "seed": s.seed,
    }
    label = f"{s.model.name}-{s.system_name(quantized)}"
    output = Output("train" if quantized else "train_float", "exp", label, settings, inputs)
    baseline = output if not quantized else model(s, quantized=False)
    return Output(
        output.stage,
        output.kind,
        output.label,
        output.settings,
        output.inputs,
        notes={"system": s.system_name(quantized), "baseline": baseline.relpath},
    )


# Settings added after models were trained: left out of a model's identity while they are at their defaults
# (the noise settings while noise is off), so those models keep their identity.
ADDED_LATER: dict[str, dict[str, Any]] = {
    "model": {"encoder": "conformer"},
    "quant": {"noise": "none", "noise_std": None, "noise_table": None, "quantize_frontend": False},
}


def _model_identity(s: RecipeSettings) -> dict:
    settings = asdict(s.model)
    return {k: v for k, v in settings.items() if ADDED_LATER["model"].get(k, object()) != v}


def _quant_identity(config: QuantConfig) -> dict:
    """The quantization settings a model depends on."""
    settings = asdict(config)
    for key, default in ADDED_LATER["quant"].items():
        if settings[key] == default or (key.startswith("noise") and config.noise == "none"):
            del settings[key]
    return settings


def systems(s: RecipeSettings) -> list[Output]:
    """The float model, and the configured system if it is quantized."""
    return [model(s, False)] + ([model(s, True)] if s.quantized else [])


def _decode_settings(s: RecipeSettings, split: str, method: str) -> dict:
    return {"split": split, "method": method, **s.decode.method_settings(method)}


def decodes(s: RecipeSettings, trained: Output) -> list[Output]:
    """Every split and method of `decode` for one trained model."""
    inputs = {"model": trained, **data_inputs(s)}
    return [
        Output("decode", "decode", method, _decode_settings(s, split, method), inputs, (trained.name, split))
        for split in s.decode.splits
        for method in s.decode.methods
    ]


def chip(s: RecipeSettings, trained: Output) -> Output:
    """The crossbar configuration that holds a quantized model (its summary: cells, tiles, ADC conversions)."""
    m = s.memsim
    settings = {"crossbar": asdict(s.chip_config()), "seed": m.seed, "precycle_per_instance": m.precycle_per_instance}
    if m.adc == "auto":  # per-layer ADCs change the results: in the identity (absent otherwise, as before they existed)
        settings["adc_auto"] = {"budget_bits": m.adc_budget_bits, "coverage": m.adc_coverage}
    if m.layer_adc:
        settings["layer_adc"] = dict(m.layer_adc)
    if list(m.kinds) != ["linear"]:
        settings["kinds"] = list(m.kinds)
    if m.tune_steps:  # the tuning batches come from the training loader's settings
        settings["tune"] = {"steps": m.tune_steps, "lr": m.tune_lr, "loader": asdict(s.loader), "seed": s.seed}
    return Output("memsim", "memsim", s.memsim.name, settings, {"model": trained}, (trained.name,))


def chip_decodes(s: RecipeSettings, trained: Output, programmed: Output) -> list[Output]:
    """Every instance, split and method of a chip configuration."""
    inputs = {"chip": programmed, "model": trained, **data_inputs(s)}
    return [
        Output(
            "memsim",
            "memsim",
            method,
            {"instance": k, **_decode_settings(s, split, method)},
            inputs,
            (trained.name, programmed.name, f"instance-{k}", split),
        )
        for k in range(s.memsim.instances)
        for split in s.decode.splits
        for method in s.decode.methods
    ]
