"""The runner: `stages=[...]` in order, each making only the outputs it lacks (asr.records).

Before anything runs, the whole run is planned: every pending output (missing, out of date, made from an
input this run makes again, or of a stage named in `force`), and for each its inputs, which must exist and
be current or be made earlier in this run. So a run that cannot finish stops at once, with a message
naming the stage to run first, instead of after hours of training.

Processes that share a work_dir (the jobs of a sweep) never make one output at once: a stage holds the lock
of each output it makes (asr.records.locked) from before it plans the jobs until they are
committed. A process that finds an output locked waits, then reuses what the other made; if the other died,
its lock is free and the waiting process resumes the output (a training run from its checkpoints).

Under torchrun only rank 0 runs the stages that are not training, only rank 0 writes records, and only rank
0 takes locks: run one torchrun job per model.
"""

import logging
import time

from omegaconf import DictConfig

from asr.errors import UserError
from asr.pipeline import allocation
from asr.pipeline.stages import STAGES, Stage
from asr.records import Job, Output, Records, environment, locked, rank
from asr.settings import RecipeSettings, load

log = logging.getLogger(__name__)


def plan(recipe: RecipeSettings) -> list[tuple[str, list[Output]]]:
    """Each stage of the run with the outputs it will make; a UserError if an input will be missing."""
    records = Records(recipe.work_dir_path, writer=rank() == 0)
    remade: set[str] = set()  # folders of the outputs this run makes
    steps: list[tuple[str, list[Output]]] = []
    for name in recipe.stage_names:
        stage = STAGES[name]
        if stage.outputs is None:
            steps.append((name, []))
            continue
        pending = []
        for output in stage.outputs(recipe):  # inputs before the outputs made from them
            if output.relpath in remade:  # made by this run already (an earlier stage, or listed twice)
                continue
            if (
                name in recipe.force
                or not records.current(output)
                or any(i.relpath in remade for i in output.inputs.values())
            ):
                pending.append(output)
                remade.add(output.relpath)
        for output in pending:
            for used in output.inputs.values():
                if used.relpath not in remade and (not records.current(used) or _made_from(used, remade)):
                    raise UserError(_missing_input(name, used, records))
        steps.append((name, pending))
    return steps


def _made_from(output: Output, remade: set[str]) -> bool:
    """Whether anything `output` is made from, directly or not, is made again by this run (so that
    `output`, unless made again too, will be out of date)."""
    return any(used.relpath in remade or _made_from(used, remade) for used in output.inputs.values())


def _missing_input(stage: str, used: Output, records: Records) -> str:
    state = (
        "does not exist yet"
        if records.get(used.relpath) is None
        else "is or will be out of date (its inputs are made again)"
    )
    return (
        f"stage {stage} needs {used.relpath}, which {state}: it is made by stage {used.stage}; run "
        f"stages=[{used.stage},...,{stage}] or stages=all"
    )


def _jobs(recipe: RecipeSettings, outputs: list[Output], forced: bool, writer: bool) -> list[Job]:
    """Jobs in order, each knowing the runs of its inputs: made earlier (their records) or by this stage."""
    records, runs, jobs = Records(recipe.work_dir_path), dict[str, str](), list[Job]()
    for output in outputs:
        input_runs = (
            {role: runs.get(used.relpath) or records.require(used.relpath).run for role, used in output.inputs.items()}
            if writer
            else None
        )
        jobs.append(Job(recipe.work_dir_path, output, input_runs, forced))
        runs[output.relpath] = jobs[-1].run
    return jobs


def run(cfg: DictConfig) -> None:
    """Check every setting, plan the run, then run its stages in order."""
    environment()  # the revision that runs: read now, before anyone can check out another one mid-run
    recipe = allocation.resolve(load(cfg))
    steps = plan(recipe)
    ignored = [name for name in recipe.force if name not in recipe.stage_names]
    if ignored:
        log.warning("force=%s names stages that this run does not run (stages=%s)", ignored, recipe.stage_names)
    writer = rank() == 0
    for name, outputs in steps:
        stage = STAGES[name]
        if not writer and not stage.all_ranks:
            continue
        if stage.outputs is not None and not outputs:
            if stage.outputs(recipe):
                log.info("stage %s: done already; force=[%s] makes its outputs again", name, name)
            else:
                log.info("stage %s: nothing to make with these settings", name)
            continue
        with locked([recipe.work_dir_path / o.relpath for o in outputs] if writer else []):
            if writer and stage.outputs is not None and name not in recipe.force:
                outputs = _still_pending(recipe, outputs)
                if not outputs:
                    log.info("stage %s: another process made its outputs meanwhile; reusing them", name)
                    continue
            _make(recipe, name, stage, _jobs(recipe, outputs, forced=name in recipe.force, writer=writer))


def _still_pending(recipe: RecipeSettings, outputs: list[Output]) -> list[Output]:
    """The outputs not made (or not made from the current runs of their inputs) by another process while
    this one waited for their locks."""
    records = Records(recipe.work_dir_path)
    return [output for output in outputs if not records.current(output)]


def _make(recipe: RecipeSettings, name: str, stage: Stage, jobs: list[Job]) -> None:
    log.info("stage %s: making %d output(s)%s", name, len(jobs), "".join(f"\n  {j.path}" for j in jobs[:8]))
    began = time.perf_counter()
    for job in jobs:
        job.begin()
    stage.make(recipe, jobs)
    unfinished = [str(j.path) for j in jobs if not j.committed]
    if unfinished:
        raise RuntimeError(f"stage {name} returned without finishing {unfinished}")
    log.info("stage %s: finished in %.1f s", name, time.perf_counter() - began)
