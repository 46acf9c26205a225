"""The one place that says which settings make an output's identity, and how a record that lacks a setting
added later is read.

An identity (asr.records.Output.digest) hashes the settings an output depends on. A setting added to the code
must not re-key the outputs made before it existed, or every model and chip would be made again for nothing.
So each group lists the fields its identity held when this rule was made (BASELINE): those are always part
of it. A field added since is part of an identity only when it differs from its default, and a record that
lacks it is read as holding the default (with_defaults): the default is, by that rule, the behaviour from
before the setting existed.

Some fields predate the rule and follow it with a value of their own (ABSENT_AT): the model's `encoder`,
and the quantization's noise settings and `quantize_frontend` (the noise settings leave the identity
whenever noise is off). The chip's own settings beside its crossbar (kinds, ADC plan, layer bits, tuning, read
passes) are absent at their defaults (CHIP_DEFAULTS).
"""

import dataclasses
from typing import Any

from asr.model import ModelConfig
from asr.quant import QuantConfig
from memsim import CrossbarConfig

BASELINE: dict[str, frozenset[str]] = {
    "model": frozenset(
        (
            "name",  # the recipe's label of the architecture (asr.settings.ModelSettings)
            "vocab_size",
            "n_mels",
            "frontend",
            "d_model",
            "n_layers",
            "n_heads",
            "d_ff",
            "kernel_size",
            "dropout",
            "attn_dropout",
            "pos_enc",
            "conv_norm",
        )
    ),
    "quant": frozenset(
        (
            "weight_bits",
            "weight_scale",
            "per_channel",
            "input_bits",
            "input_momentum",
            "output_bits",
            "quantize_attention",
            "quantize_depthwise",
            "include",
            "exclude",
        )
    ),
    "crossbar": frozenset(
        (
            "weight_bits",
            "levels_per_cell",
            "tile_size",
            "dac_bits",
            "v_read",
            "adc_precision_bits",
            "adc_range_bits",
            "read_noise",
            "device",
            "set_voltage",
            "reset_voltage",
            "random_cycles",
            "precycle_pulses",
            "verify_retries",
            "verify_step",
            "reset_start",
            "reset_step",
            "reset_max",
            "verify_tolerance",
            "pulse_budget",
            "dac_grid",
            "calibration",
            "device_variation",
            "cycle_variation",
            "iv_nonlinearity",
            "var_order",
            "params_path",
        )
    ),
}
DEFAULTS: dict[str, dict[str, Any]] = {
    "model": dataclasses.asdict(ModelConfig(vocab_size=1)),
    "quant": dataclasses.asdict(QuantConfig()),
    "crossbar": dataclasses.asdict(CrossbarConfig()),
}
# Fields added before this rule, with the value at which each is left out of an identity (noise_std's was
# None, not its dataclass default 0.05: it was left out whenever noise was off, and kept otherwise)
ABSENT_AT: dict[str, dict[str, Any]] = {
    "model": {"encoder": "conformer"},
    "quant": {"noise": "none", "noise_std": None, "noise_table": None, "quantize_frontend": False},
}
# Fields added with a default other than the behaviour before them: a record that lacks one was made with this
# value, at which the field is also left out of an identity (multi-level chips verified first-past before
# verify_scheme centred their levels)
MADE_BEFORE: dict[str, dict[str, Any]] = {"crossbar": {"verify_scheme": "first_past"}}
# Crossbar fields that only multi-level programming reads: meaningless, and left out, on binary cells
MULTI_LEVEL_ONLY = ("verify_scheme",)
# A chip's settings beside its crossbar, and the value each has when it is absent from the chip's identity
CHIP_DEFAULTS: dict[str, Any] = {
    "kinds": ["linear"],
    "adc_auto": None,
    "layer_adc": {},
    "layer_bits": {},
    "tune": None,
    "read_passes": 0,
}
# meaningless, and left out, while quantization noise is off
NOISE_SETTINGS = ("noise_std", "noise_table", "noise_chip")


def identity(group: str, values: dict[str, Any]) -> dict[str, Any]:
    """The part of a group's settings (dataclasses.asdict of its config) that is an identity: the BASELINE
    fields, and every later field that differs from its default (ABSENT_AT's value, where it has one)."""
    absent_at = {**DEFAULTS[group], **ABSENT_AT.get(group, {}), **MADE_BEFORE.get(group, {})}
    kept = {k: v for k, v in values.items() if k in BASELINE[group] or v != absent_at.get(k, _ABSENT)}
    if group == "quant" and values.get("noise", "none") == "none":
        kept = {k: v for k, v in kept.items() if k not in NOISE_SETTINGS}
    if _binary(group, values):
        kept = {k: v for k, v in kept.items() if k not in MULTI_LEVEL_ONLY}
    return kept


def chip_identity(extras: dict[str, Any]) -> dict[str, Any]:
    """A chip's settings beside its crossbar, without those at their defaults (CHIP_DEFAULTS)."""
    return {k: v for k, v in extras.items() if k not in CHIP_DEFAULTS or v != CHIP_DEFAULTS[k]}


def with_defaults(group: str, recorded: dict[str, Any]) -> dict[str, Any]:
    """A group's settings as a record holds them, with every setting it lacks at its default ("chip" reads a
    chip's settings beside its crossbar)."""
    defaults = CHIP_DEFAULTS if group == "chip" else DEFAULTS[group]
    if not _binary(group, recorded):
        defaults = {**defaults, **MADE_BEFORE.get(group, {})}
    return {**defaults, **recorded}


def _binary(group: str, values: dict[str, Any]) -> bool:
    """Whether these are the settings of a crossbar of binary cells."""
    return group == "crossbar" and values.get("levels_per_cell", 2) == 2


_ABSENT = object()
