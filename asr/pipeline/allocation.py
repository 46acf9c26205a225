"""Mixed precision under an energy budget, as recipe settings: `allocation.budget_uj` (or budget_fraction) turns
the configured uniform system into the allocated one before any stage runs.

The configured system (uniform weight bits, its chip's ADC) must have its sensitivity table (stage sensitivity,
on dev). memsim.allocate_under_budget picks one candidate per crossbar layer with the least summed sensitivity
within the budget; the allocated system then holds those weight bits (quant.layer_bits, the layers whose bits
differ) and ADCs (memsim.layer_adc, every layer), is fine-tuned from the uniform QAT model at its chosen bits
(qat_train.init_from, when any layer's bits change; otherwise it is the uniform model), and is named by its budget
(quant.name and memsim.name gain e.g. -alloc1x). Everything downstream (chips, decoding on dev and test, the
report) is the recipe's as for any system.
"""

import dataclasses
import logging
from pathlib import Path

from asr.checkpoint import FINAL
from asr.errors import CorruptFile, UserError
from asr.files import read_json
from asr.pipeline import graph
from asr.records import Records
from asr.sensitivity import TABLE_FILE, SensitivitySettings, allocation_candidates, own_energy
from asr.settings import RecipeSettings, check
from memsim import allocate_under_budget

log = logging.getLogger(__name__)


def resolve(recipe: RecipeSettings) -> RecipeSettings:
    """The recipe with its allocation made (itself when allocation is unset); a UserError names what is missing."""
    budget = recipe.allocation
    if not budget.active:
        return recipe
    if not recipe.quantized:
        raise UserError("allocation needs a quantized system (quant.weight_bits)")
    if recipe.quant.layer_bits or recipe.memsim.layer_adc:
        raise UserError("allocation chooses quant.layer_bits and memsim.layer_adc itself: leave them unset")
    trained = graph.model_output(recipe, True)
    measured = graph.sensitivity_output(recipe, trained, graph.chip_output(recipe, trained))
    if not recipe.sensitivity.candidates or not Records(recipe.work_dir_path).current(measured):
        raise UserError(
            f"allocation needs the sensitivity table of this configuration ({recipe.work_dir_path / measured.relpath}):"
            " run it first with the same settings, sensitivity.weight_bits and sensitivity.adcs set, "
            "stages=[sensitivity] and without allocation.*"
        )
    path = recipe.work_dir_path / measured.relpath / TABLE_FILE
    return allocated(recipe, read_json(path), path)


def allocated(recipe: RecipeSettings, table: dict, path: Path) -> RecipeSettings:
    """The recipe holding the allocation that the sensitivity table at `path` gives within its budget."""
    budget = recipe.allocation
    try:
        candidates = allocation_candidates(table)
        uniform = own_energy(table)
    except (KeyError, TypeError, IndexError) as error:
        raise CorruptFile(f"{path}: not a sensitivity table ({type(error).__name__}: {error})") from None
    limit = budget.budget_uj if budget.budget_fraction is None else budget.budget_fraction * uniform
    if limit is None:
        raise ValueError("allocated() needs allocation.budget_uj or allocation.budget_fraction")
    try:
        choice = allocate_under_budget(candidates, limit)
    except ValueError as error:
        raise UserError(f"allocation: {error} (microjoules per second of audio; {path})") from None
    layer_bits = {
        name: s.weight_bits for name, s in choice.settings.items() if s.weight_bits != recipe.quant.weight_bits
    }
    quant = dataclasses.replace(
        recipe.quant,
        layer_bits=layer_bits,
        name=f"{recipe.system_name(True)}-{budget.label}" if layer_bits else recipe.quant.name,
    )
    memsim = dataclasses.replace(
        recipe.memsim,
        layer_adc={name: list(s.adc) for name, s in choice.settings.items()},
        name=f"{recipe.memsim.name}-{budget.label}",
    )
    uniform_model = recipe.work_dir_path / graph.model_output(recipe, True).relpath / FINAL
    qat_train = {**recipe.qat_train, "init_from": str(uniform_model)} if layer_bits else recipe.qat_train
    # the allocated system is measured by its WER and energy; its own sensitivity table is not wanted
    result = dataclasses.replace(
        recipe, quant=quant, memsim=memsim, qat_train=qat_train, sensitivity=SensitivitySettings()
    )
    check(result)
    log.info(
        "allocation (%s): %.1f of %.1f uJ per second of audio (the uniform chip: %.1f), summed dev-loss sensitivity "
        "%+.3f; weight bits changed on %d of %d layers",
        budget.method,
        choice.energy,
        limit,
        uniform,
        choice.sensitivity,
        len(layer_bits),
        len(choice.settings),
    )
    return result
