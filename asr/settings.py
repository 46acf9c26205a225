"""The recipe's settings: a typed schema for every Hydra config group, all checked before any stage runs.

The schema is made from the dataclasses the code itself uses, so every default lives in one place:
- `model`: asr.model.ModelConfig (its vocab_size and n_mels come from the tokenizer and the features), + name
- `quant`: asr.quant.QuantConfig, + name
- `train`: asr.train.TrainConfig (its seed: the run's top-level `seed` unless set), + init_from
- `memsim`: CrossbarConfig (its weight_bits come from `quant`), + name, instances, seed, adc
- `prepare`: asr.data.tedlium.Options
- `data`, `tokenizer`, `features`, `loader`, `decode`: their modules' own settings dataclasses.
A YAML file under configs/ holds only what differs from these defaults. Hydra type-checks every file and
override against the schema (an unknown key or a wrong type stops composition); `load` then builds the
real dataclasses, whose checks name the bad setting, and checks the settings against each other.
"""

import dataclasses
import functools
import logging
import os
import typing
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import torch
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING as REQUIRED
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from asr import checkpoint, identity
from asr.data.corpus import DataSettings
from asr.data.features import FeatureSettings
from asr.data.loader import LoaderSettings
from asr.data.tedlium import Options as PrepareOptions
from asr.decode import DecodeSettings
from asr.errors import CorruptFile, UserError
from asr.model import ModelConfig
from asr.quant import POSITION_LAYERS, QuantConfig, max_level
from asr.sensitivity import AllocationSettings, SensitivitySettings
from asr.tokenizer import TokenizerSettings
from asr.train import TrainConfig
from memsim import ADC_PRESETS, NON_IDEALITIES, CrossbarConfig, WireWeightModel, weight_error_model
from memsim.config import PRESETS
from memsim.converters import MAX_ADC_BUDGET_BITS

log = logging.getLogger(__name__)

STAGE_NAMES = ("prepare", "tokenizer", "cmvn", "train_float", "train", "decode", "memsim", "sensitivity", "report")
FLOAT = "float"  # the name of the unquantized system, and the value of init_from that means "the float model"
ADC_CHOICES = (*ADC_PRESETS, "ideal", "auto")
CHIP_SEEDS_PER_TRAINING_SEED = 100_000  # chip seeds apart per QAT training seed: room for that many instances


def mirror(cls: type, name: str, *, drop: tuple[str, ...] = (), add: tuple[tuple[str, Any, Any], ...] = ()) -> type:
    """A mutable dataclass with the fields and defaults of dataclass `cls` (minus `drop`, plus `add`: (name,
    type, default; a callable such as dict is a default factory)), for Hydra to check settings against; its
    `build(**more)` makes `cls` itself (which validates) from the kept fields plus `more`."""
    hints = typing.get_type_hints(cls)
    kept = [f for f in dataclasses.fields(cls) if f.name not in drop]

    def default(f: dataclasses.Field) -> dataclasses.Field:
        if f.default_factory is not MISSING:
            return field(default_factory=f.default_factory)
        return field(default=f.default)

    def build(self, **more):
        return cls(**{f.name: getattr(self, f.name) for f in kept}, **more)

    added = [(n, t, field(default_factory=d) if callable(d) else field(default=d)) for n, t, d in add]
    fields_ = added + [(f.name, hints[f.name], default(f)) for f in kept]
    return dataclasses.make_dataclass(
        name,
        fields_,
        namespace={
            "build": build,
            "__doc__": f"The recipe's settings of {cls.__module__}.{cls.__qualname__}; build() makes one.",
        },
    )


if TYPE_CHECKING:  # made at run time from the dataclasses' own fields, so a type checker sees them as Any
    ModelSettings: TypeAlias = Any
    QuantSettings: TypeAlias = Any
    TrainSettings: TypeAlias = Any
    ChipSettings: TypeAlias = Any
    PrepareSettings: TypeAlias = Any
else:
    ModelSettings = mirror(ModelConfig, "ModelSettings", drop=("vocab_size", "n_mels"), add=(("name", str, "paper"),))
    QuantSettings = mirror(
        QuantConfig,
        "QuantSettings",
        # quant.noise=chip measures its table from the `memsim` settings, quant.noise=wires takes their chip
        # (quant_config)
        drop=("noise_table", "noise_chip"),
        add=(
            ("name", str | None, None),  # None: `float`, or w<weight_bits>a<input_bits> such as w3a8
        ),
    )
    TrainSettings = mirror(
        TrainConfig,
        "TrainSettings",
        drop=("seed",),
        add=(
            ("init_from", str | None, None),  # None | "float" (this configuration's float model) | a checkpoint
            # None: the top-level `seed`; +qat_train.seed=1,2 trains the quantized system again from the same
            # float model with other draws (batch order, augmentation, dropout): the training seeds of a comparison
            ("seed", int | None, None),
        ),
    )
    ChipSettings = mirror(
        CrossbarConfig,
        "ChipSettings",
        drop=("weight_bits",),
        add=(
            ("name", str, "chip"),  # a label for outputs and tables
            ("instances", int, 3),  # programming instances (fresh chips), each decoding every split
            # instance k is programmed with seed + k (+ CHIP_SEEDS_PER_TRAINING_SEED x the QAT model's training seed)
            ("seed", int, 1000),
            # the ADC: None (adc_precision_bits and adc_range_bits as set), a preset of ADC_PRESETS, "ideal", or
            # "auto": per layer, adc_budget_bits split into range (what holds a fraction adc_coverage of the
            # layer's column outputs on calibration batches of the train split) and precision (the rest)
            ("adc", str | None, None),
            ("adc_budget_bits", int | None, None),
            ("adc_coverage", float, 0.999),
            # per-layer ADCs after the above: {layer-name pattern: [precision bits, range bits]}, first match wins
            ("layer_adc", dict[str, Any], dict),
            # which quantization-aware layers the chip holds (memsim.KINDS): "linear", and "conv" for the
            # depthwise convolutions that quant.quantize_depthwise quantizes (their DAC range calibrated)
            ("kinds", list[str], lambda: ["linear"]),
            # chip-in-the-loop fine-tuning of each programmed instance before it decodes (asr.chips.tune): AdamW
            # steps on the biases, norms and output layer over the train split; 0: none
            ("tune_steps", int, 0),
            ("tune_lr", float, 1e-4),
            # instance k (1..instances) pre-cycles precycle_pulses + k x this (the paper's protocol: 50)
            ("precycle_per_instance", int, 0),
            # with read_disturb: passes of reads over each split before it is decoded, the chip's state carried
            # from pass to pass (each split starts from the chip as prepared; asr.chips.start_split)
            ("read_passes", int, 0),
            # an ablation: "all" keeps every non-ideality, "none" removes them all, or the one of
            # memsim.NON_IDEALITIES to keep alone (CrossbarConfig.only)
            ("only", str, "all"),
        ),
    )
    PrepareSettings = mirror(PrepareOptions, "PrepareSettings")


@dataclass
class RecipeSettings:
    """Everything `python scripts/run.py` reads: the top-level keys and one node per config group."""

    work_dir: str = "work/${data.name}"  # every output of every stage goes under it
    stages: Any = "all"  # "all" or a list of STAGE_NAMES, run in that order
    force: list[str] = field(default_factory=list)  # stages to run again although done
    seed: int = 0
    data: DataSettings = REQUIRED  # a data group must be chosen (configs/data/)
    prepare: PrepareSettings = field(default_factory=PrepareSettings)
    tokenizer: TokenizerSettings = field(default_factory=TokenizerSettings)
    features: FeatureSettings = field(default_factory=FeatureSettings)
    loader: LoaderSettings = field(default_factory=LoaderSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    quant: QuantSettings = field(default_factory=QuantSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    qat_train: dict[str, Any] = field(default_factory=dict)  # `train` settings that differ for a quantized system
    decode: DecodeSettings = field(default_factory=DecodeSettings)
    memsim: ChipSettings = field(default_factory=ChipSettings)
    # per-layer sensitivity of the configured chip on dev (asr.sensitivity; stage sensitivity), for the allocation
    sensitivity: SensitivitySettings = field(default_factory=SensitivitySettings)
    # per-layer bits and ADCs from that table within an energy budget (asr.pipeline.allocation.resolve)
    allocation: AllocationSettings = field(default_factory=AllocationSettings)

    @property
    def work_dir_path(self) -> Path:
        return Path(self.work_dir)

    @property
    def quantized(self) -> bool:
        """Whether the configured system is quantization-aware (else it is the float model)."""
        return self.quant.weight_bits is not None

    @property
    def stage_names(self) -> list[str]:
        """`stages` as a list: "all" is every stage in order, a single name a list of one."""
        if isinstance(self.stages, str):
            return list(STAGE_NAMES) if self.stages == "all" else [self.stages]
        return list(self.stages)

    def quant_config(self, quantized: bool) -> QuantConfig:
        """The float model's (no quantization) or the quantized system's; with quant.noise=chip, its noise table is
        measured from the chip of the `memsim` settings (memsim.weight_error_model, fixed seed); with quant.noise=wires,
        that chip's nominal self (memsim.WireWeightModel.nominal: what its wires do, not its converters or
        variations, enters the model's identity)."""
        if not quantized:
            return QuantConfig(weight_bits=None)
        table = _noise_table(self.chip_config()) if self.quant.noise == "chip" else None
        chip = _wire_chip(self.chip_config()) if self.quant.noise == "wires" else None
        return self.quant.build(noise_table=table, noise_chip=chip)

    def system_name(self, quantized: bool) -> str:
        """The label of the float model or of the configured system, e.g. `w3a8` (`w3a8-dw` with the depthwise
        convolutions quantized too, `w3a8-all` with the frontend as well; `w3a8-gauss0.05`, `w3a8-chipnoise` with
        noise-aware training; `w3a8-pos` with the position projections on the chip, quant=qat_pos; `w3a8-mixed` with
        per-layer bits, quant.layer_bits); `{bits}` in quant.name becomes the weight bits (`paper-w{bits}`:
        paper-w3)."""
        if not quantized:
            return FLOAT
        bits = f"{self.quant.weight_bits:g}"
        if self.quant.name:
            return self.quant.name.replace("{bits}", bits)
        mapped = "-all" if self.quant.quantize_frontend else "-dw" if self.quant.quantize_depthwise else ""
        noise = {"none": "", "gauss": f"-gauss{self.quant.noise_std:g}", "chip": "-chipnoise", "wires": "-wires"}[
            self.quant.noise
        ]
        positions = "-pos" if POSITION_LAYERS in self.quant.include else ""
        mixed = "-mixed" if self.quant.layer_bits else ""
        return f"w{bits}a{self.quant.input_bits}{mapped}{positions}{mixed}{noise}"

    def train_settings(self, quantized: bool) -> TrainSettings:
        """The training run of the float model, or of the quantized system (`train` updated by `qat_train`)."""
        if not quantized:
            return self.train
        return dataclasses.replace(self.train, **self.qat_train)

    def train_seed(self, quantized: bool) -> int:
        """The seed of the float model's training run or of the quantized system's."""
        seed = self.train_settings(quantized).seed
        return self.seed if seed is None else seed

    @property
    def chip_seed(self) -> int:
        """The seed of the quantized system's chip instance 0: memsim.seed, moved by the QAT model's training seed
        so that the chips of models trained with other seeds are programmed from their own random streams (their
        instances nest in their training runs); at training seed 0, memsim.seed itself."""
        return self.memsim.seed + CHIP_SEEDS_PER_TRAINING_SEED * self.train_seed(True)

    def train_config(self, quantized: bool) -> TrainConfig:
        return self.train_settings(quantized).build(seed=self.train_seed(quantized))

    def chip_config(self, instance: int = 0) -> CrossbarConfig:
        """The crossbar chip that holds the quantized system's weights, as programmed for `instance` (0-based:
        it sets the pre-cycling of precycle_per_instance)."""
        chip_settings = self.memsim
        config = chip_settings.build(weight_bits=self.quant.weight_bits)
        if chip_settings.adc == "ideal":
            config = dataclasses.replace(config, adc_precision_bits=None, adc_range_bits=None)
        elif chip_settings.adc in ADC_PRESETS:
            config = config.with_adc(chip_settings.adc)
        if chip_settings.precycle_per_instance:
            config = dataclasses.replace(
                config, precycle_pulses=config.precycle_pulses + (instance + 1) * chip_settings.precycle_per_instance
            )
        if chip_settings.only != "all":
            config = config.only(None if chip_settings.only == "none" else chip_settings.only)
        return config


def _wire_chip(chip: CrossbarConfig) -> dict:
    """The chip quant.noise=wires trains against, as the model's settings record it: its nominal self
    (memsim.WireWeightModel.nominal) as a chip identity holds it (asr.identity: a crossbar field added later leaves
    it as it is at its default), with verify_scheme always, so that CrossbarConfig(**it) is that chip."""
    nominal = WireWeightModel.nominal(chip)
    return {**identity.identity("crossbar", dataclasses.asdict(nominal)), "verify_scheme": nominal.verify_scheme}


@functools.lru_cache(maxsize=8)
def _noise_table(chip: CrossbarConfig) -> dict:
    """memsim.weight_error_model of a chip as a dict (it goes into the model's settings and checkpoint)."""
    return dataclasses.asdict(weight_error_model(chip, generator=torch.Generator().manual_seed(0)))


def register() -> None:
    """Make the schema known to Hydra as `recipe_schema` (configs/config.yaml lists it first), memsim's chip
    presets as `memsim_preset/<name>` (CrossbarConfig.preset's fields, which configs/memsim/paper.yaml starts
    from), the resolver that names a chip's ADC in its default label (${adc_label:...}), and ${pid:}, the
    process id, which keeps the log folders of runs started in the same second apart."""
    store = ConfigStore.instance()
    store.store(name="recipe_schema", node=RecipeSettings)
    for preset, fields in PRESETS.items():  # configs/memsim/<preset>.yaml start from memsim's own preset
        store.store(group="memsim_preset", name=preset, node=dict(fields))
    OmegaConf.register_new_resolver("adc_label", adc_label, replace=True)
    OmegaConf.register_new_resolver("pid", os.getpid, replace=True)


def adc_label(adc: str | None, precision_bits: int | None, range_bits: int | None, budget_bits: int | None) -> str:
    """The ADC's part of a chip's default label: its preset or mode (a preset's bits set directly name the
    preset), else its bits, e.g. adc6.8; auto with its budget, e.g. auto12."""
    if adc == "auto":
        return f"auto{budget_bits}"
    if adc:
        return adc
    named = [name for name, bits in ADC_PRESETS.items() if bits == (precision_bits, range_bits)]
    return named[0] if named else f"adc{precision_bits}.{range_bits}"


def load(cfg: DictConfig) -> RecipeSettings:
    """The typed settings of a composed configuration, every group checked; a UserError names the setting."""
    values: dict[str, Any] = {}
    for f in dataclasses.fields(RecipeSettings):
        node = cfg[f.name]
        try:
            values[f.name] = OmegaConf.to_object(node) if OmegaConf.is_config(node) else node
        except (ValueError, TypeError, OmegaConfBaseException) as error:
            raise _named(f.name, error) from None
    settings = RecipeSettings(**values)
    check(settings)
    return settings


def check(recipe: RecipeSettings) -> None:
    """Every setting that no single dataclass can check: each group's real dataclass is built once, and the
    groups are checked against each other."""
    unknown = [name for name in [*recipe.stage_names, *recipe.force] if name not in STAGE_NAMES]
    if unknown:
        raise UserError(f"unknown stage(s) {unknown}; known: {list(STAGE_NAMES)} (or stages=all)")
    _canonical_bits(recipe)
    _built("model", lambda: recipe.model.build(vocab_size=1, n_mels=recipe.features.num_mel_bins))
    _built("quant", lambda: recipe.quant_config(recipe.quantized))
    _built("train", lambda: recipe.train_config(False))
    unknown = sorted(set(recipe.qat_train) - {f.name for f in dataclasses.fields(TrainSettings)})
    if unknown:
        raise UserError(
            f"qat_train: {unknown} are not train settings (known: "
            f"{[f.name for f in dataclasses.fields(TrainSettings)]})"
        )
    recipe.qat_train = _typed_qat_train(recipe.qat_train)
    _check_names(recipe)
    if recipe.quantized:
        _built("qat_train", lambda: recipe.train_config(True))
    for quantized in {False, recipe.quantized}:
        _check_init_from(recipe, quantized)
    if recipe.quantized:
        _check_chip(recipe)


def _built(group: str, make) -> Any:
    try:
        return make()
    except (ValueError, TypeError) as error:
        raise _named(group, error) from None


def _named(group: str, error: Exception) -> UserError:
    """The error as a UserError that names its group, unless its message names the setting already."""
    message = str(error)
    return UserError(message if message.startswith(f"{group}.") else f"{group} settings: {message}")


def _canonical_bits(recipe: RecipeSettings) -> None:
    """Symmetric 2-bit weights have the levels of ternary (1.5-bit) weights, {-1, 0, 1}: the same model.
    2 is rewritten to 1.5, so a sweep over both makes one model (named w1.5a8 unless quant.name is set)."""
    if recipe.quant.weight_bits == 2:
        recipe.quant.weight_bits = 1.5
        log.warning(
            "quant.weight_bits=2 has the levels of 1.5 bits (ternary, +-%d): running it as 1.5 bits", max_level(1.5)
        )


def _typed_qat_train(overrides: dict[str, Any]) -> dict[str, Any]:
    """qat_train's values checked against the types of the train settings they replace (Hydra sees qat_train as
    a free dict), converted as Hydra converts them (e.g. "5" to 5); a UserError names a value of another type."""
    schema = OmegaConf.structured(TrainSettings)
    typed = {}
    for key, value in overrides.items():
        try:
            typed[key] = typing.cast(dict, OmegaConf.to_container(OmegaConf.merge(schema, {key: value})))[key]
        except OmegaConfBaseException:
            hint = typing.get_type_hints(TrainSettings)[key]
            raise UserError(f"qat_train.{key}: {value!r} is not a value of type {_type_name(hint)}") from None
    return typed


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


# Settings whose values name folders and table rows: an empty name would make an unlabelled output
NAMES = ("data.name", "model.name", "quant.name", "memsim.name")


def _check_names(recipe: RecipeSettings) -> None:
    for setting in NAMES:
        group, key = setting.split(".")
        value = getattr(getattr(recipe, group), key)
        if value is not None and (not str(value).strip() or "/" in str(value)):
            raise UserError(f"{setting} must be a non-empty name without '/', got {value!r}")


def _check_init_from(recipe: RecipeSettings, quantized: bool) -> None:
    """A checkpoint named by init_from exists and holds model weights, opened as the trainer will open it
    (weights_only: it cannot run code), before any stage runs."""
    init = recipe.train_settings(quantized).init_from
    where = "qat_train.init_from" if quantized and "init_from" in recipe.qat_train else "train.init_from"
    if init == FLOAT and not quantized:
        raise UserError(f"{where}=float starts a model from the float model, but this is the float model itself")
    if init in (None, FLOAT):
        return
    if not Path(init).is_file():
        raise UserError(f"{where}: no such checkpoint: {init} (or use null, or 'float' for the float model)")
    try:
        checkpoint.weights(init)
    except CorruptFile as error:
        raise UserError(f"{where}: {error}") from None


def _check_chip(recipe: RecipeSettings) -> None:
    chip_settings = recipe.memsim
    if chip_settings.adc is not None and chip_settings.adc not in ADC_CHOICES:
        raise UserError(
            f"memsim.adc must be one of {list(ADC_CHOICES)} or null (then memsim.adc_precision_bits and "
            f"memsim.adc_range_bits apply), got {chip_settings.adc!r}"
        )
    defaults = (CrossbarConfig.adc_precision_bits, CrossbarConfig.adc_range_bits)
    if (
        chip_settings.adc in (*ADC_PRESETS, "ideal")
        and (chip_settings.adc_precision_bits, chip_settings.adc_range_bits) != defaults
    ):
        raise UserError(
            f"memsim.adc={chip_settings.adc} sets the ADC: set memsim.adc=null to choose memsim.adc_precision_bits "
            "and memsim.adc_range_bits yourself"
        )
    if (chip_settings.adc == "auto") != (chip_settings.adc_budget_bits is not None):
        raise UserError(
            "memsim.adc=auto needs memsim.adc_budget_bits (precision + range bits per conversion), and "
            f"memsim.adc_budget_bits needs memsim.adc=auto; got adc={chip_settings.adc}, "
            f"adc_budget_bits={chip_settings.adc_budget_bits}"
        )
    if chip_settings.adc_budget_bits is not None and not 1 <= chip_settings.adc_budget_bits <= MAX_ADC_BUDGET_BITS:
        raise UserError(
            f"memsim.adc_budget_bits must be 1 to {MAX_ADC_BUDGET_BITS}, got {chip_settings.adc_budget_bits}"
        )
    if not 0 < chip_settings.adc_coverage <= 1:
        raise UserError(f"memsim.adc_coverage must be a fraction in (0, 1], got {chip_settings.adc_coverage}")
    for pattern, bits in chip_settings.layer_adc.items():
        if not isinstance(bits, (list, tuple)) or len(bits) != 2:
            raise UserError(f"memsim.layer_adc.{pattern} must be [precision bits, range bits], got {bits!r}")
        _built(f"memsim.layer_adc.{pattern}", lambda bits=bits: recipe.chip_config().with_adc_bits(*bits))
    unknown = [k for k in chip_settings.kinds if k not in ("linear", "conv")]
    if unknown or not chip_settings.kinds:
        raise UserError(
            f"memsim.kinds must be a non-empty list of 'linear' and 'conv', got {list(chip_settings.kinds)}"
        )
    if "conv" in chip_settings.kinds and not (recipe.quant.quantize_depthwise or recipe.quant.quantize_frontend):
        raise UserError(
            "memsim.kinds has 'conv': the chip holds quantization-aware convolutions, so it needs "
            "quant.quantize_depthwise=true or quant.quantize_frontend=true"
        )
    if chip_settings.tune_steps < 0 or not chip_settings.tune_lr > 0:
        raise UserError(
            "memsim.tune_steps must be >= 0 and memsim.tune_lr > 0, "
            f"got {chip_settings.tune_steps}, {chip_settings.tune_lr}"
        )
    if chip_settings.instances < 1:
        raise UserError(f"memsim.instances must be >= 1, got {chip_settings.instances}")
    if chip_settings.only not in ("all", "none", *NON_IDEALITIES):
        raise UserError(
            f"memsim.only must be 'all', 'none' or one of {list(NON_IDEALITIES)}, got {chip_settings.only!r}"
        )
    if chip_settings.precycle_per_instance < 0:
        raise UserError(f"memsim.precycle_per_instance must be >= 0, got {chip_settings.precycle_per_instance}")
    _built("memsim", recipe.chip_config)
