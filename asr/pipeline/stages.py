"""The stages: which outputs each makes (asr.pipeline.graph), and a short body that makes them by calling
the code it drives with typed settings and the folders of its inputs. Every body commits each output
(its record) as soon as that output is complete, so an interrupted stage keeps what it finished.
"""

import functools
import itertools
import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from itertools import groupby

import torch

import memsim
from asr import chips, sensitivity, tokenizer, train
from asr.checkpoint import FINAL, load_model
from asr.data import tedlium
from asr.data.features import CMVN_FILE
from asr.data.loader import estimate_cmvn, split_loader
from asr.decode import Decoding, decode_outputs, split_batches
from asr.files import read_jsonl
from asr.pipeline import graph
from asr.records import Job, Output
from asr.reports.document import write_report
from asr.settings import RecipeSettings
from asr.tokenizer import Tokenizer

log = logging.getLogger(__name__)

LAYER_ERROR_BATCHES = 4  # batches of the first decode split that measure a chip's layer errors and energy


@dataclass(frozen=True)
class Stage:
    outputs: Callable[[RecipeSettings], list[Output]] | None  # None: no outputs of its own, runs every time
    make: Callable[[RecipeSettings, list[Job]], None]  # makes the given pending outputs
    all_ranks: bool = False  # under torchrun: training runs on every process, the rest on rank 0 only


def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def prepare(recipe: RecipeSettings, jobs: list[Job]) -> None:
    (job,) = jobs
    stats = tedlium.prepare(recipe.data.locate(), job.path, recipe.prepare.build())
    log.info("corpus statistics (%s):\n%s", job.path, tedlium.format_stats(stats))
    job.commit()


def make_tokenizer(recipe: RecipeSettings, jobs: list[Job]) -> None:
    (job,) = jobs
    units = recipe.tokenizer
    texts = [r["text"] for r in read_jsonl(job.input("manifests") / "train.jsonl")]
    trained = tokenizer.train(
        texts, job.path / tokenizer.TOKENIZER_FILE, units.model_type, units.vocab_size, units.num_threads
    )
    log.info("tokenizer: %s, %d units including blank, at %s", units.model_type, trained.vocab_size, job.path)
    job.commit()


def make_cmvn(recipe: RecipeSettings, jobs: list[Job]) -> None:
    (job,) = jobs
    records = read_jsonl(job.input("manifests") / "train.jsonl")
    estimate_cmvn(records, recipe.features, seed=recipe.seed, num_workers=recipe.loader.num_workers).save(
        job.path / CMVN_FILE
    )
    log.info("cmvn: from %d training segments at most, at %s", recipe.features.cmvn_segments, job.path)
    job.commit()


def train_models(recipe: RecipeSettings, jobs: list[Job]) -> None:
    """The float model (train_float) or the configured quantized system (train)."""
    for job in jobs:
        quantized = job.output.stage == "train"
        files = graph.data_files(recipe)
        init = job.input("init") / FINAL if "init" in job.output.inputs else recipe.train_settings(quantized).init_from
        model_config = recipe.model.build(
            vocab_size=Tokenizer(files.tokenizer).vocab_size, n_mels=recipe.features.num_mel_bins
        )
        train.train_model(
            model_config,
            recipe.quant_config(quantized),
            recipe.train_config(quantized),
            files=files,
            features=recipe.features,
            loader=recipe.loader,
            out_dir=job.path,
            init_from=init,
            fresh=not job.resumed,
        )
        job.commit()


def _decoding(recipe: RecipeSettings) -> Decoding:
    return Decoding(graph.data_files(recipe), recipe.features, recipe.decode, recipe.loader.num_workers)


def decode_models(recipe: RecipeSettings, jobs: list[Job]) -> None:
    for _, same_model in groupby(jobs, key=lambda j: j.output.inputs["model"].relpath):
        group = list(same_model)
        decode_outputs(load_model(group[0].input("model") / FINAL, device()), group, _decoding(recipe))


def decode_on_chips(recipe: RecipeSettings, jobs: list[Job]) -> None:
    """Prepare each instance that has pending outputs (asr.chips.prepare: program, calibrate, ADCs, tuning),
    summarize the chip on instance 0 (cells, layer errors, energy), and decode the instance's pending splits and
    methods."""
    summaries = [j for j in jobs if "crossbar" in j.output.settings]
    chip_output = summaries[0].output if summaries else jobs[0].output.inputs["chip"]
    folder = chips.ChipFolder.from_settings(chip_output.settings)
    by_instance = defaultdict(list)
    for job in jobs:
        if job not in summaries:
            by_instance[job.output.settings["instance"]].append(job)
    if summaries:
        by_instance.setdefault(0, [])
    model_path = jobs[0].input("model") / FINAL
    data = chips.CalibrationData(graph.data_files(recipe), recipe.features, recipe.loader.num_workers)
    instances = sorted(by_instance)
    for position, instance in enumerate(instances, 1):
        instance_jobs = by_instance[instance]
        log.info(
            "memsim instance %d (%d of %d to prepare here): programming %s, then %d split(s) to decode",
            instance,
            position,
            len(instances),
            chip_output.relpath,
            len({job.output.settings["split"] for job in instance_jobs}),
        )
        bars = chips.ProgressBars(f"program instance {instance}")
        chip = chips.prepare(model_path, folder, instance, data, device(), bars)
        seconds = (chip.program_seconds, chip.precycle_seconds)
        log.info("memsim instance %d: programmed in %.1f s (%.1f s of it pre-cycling)", instance, *seconds)
        if chip.tuning is not None:
            log.info(
                "memsim instance %d tuned: loss %.2f -> %.2f",
                instance,
                chip.tuning["loss_first"],
                chip.tuning["loss_last"],
            )
        if instance == 0:
            for job in summaries:
                split = split_batches(_decoding(recipe), recipe.decode.splits[0], recipe.decode.batch_seconds)
                batches = list(itertools.islice(split, LAYER_ERROR_BATCHES))
                summary = chips.summarize(chip, folder.chip.crossbar, model_path, batches)
                log.info("chip %s:\n%s", job.output.relpath, memsim.format_summary(memsim.summary(chip.model)))
                job.commit({chips.SUMMARY_FILE: summary})
        if instance_jobs:
            decoding = _decoding(recipe)
            start = functools.partial(
                chips.start_split,
                chip,
                chips.prepared_state(chip.model),
                passes=folder.read_passes,
                batches=functools.partial(split_batches, decoding, batch_seconds=recipe.decode.batch_seconds),
            )
            decode_outputs(
                chip.model, instance_jobs, decoding, start, functools.partial(chips.read_switches, chip.model)
            )


def measure_sensitivity(recipe: RecipeSettings, jobs: list[Job]) -> None:
    """Each crossbar layer's dev-loss change at each candidate setting, on instance 0 of the chip
    (asr.sensitivity.measure), on dev batches spread over the split."""
    (job,) = jobs
    files = graph.data_files(recipe)
    loader = split_loader(
        files,
        sensitivity.SPLIT,
        recipe.features,
        max_seconds=chips.CALIBRATION_SECONDS,
        num_workers=recipe.loader.num_workers,
        seed=recipe.seed,
        train=False,
    )
    batches = sensitivity.spread_batches(list(loader), recipe.sensitivity.seconds, chips.CALIBRATION_SECONDS)
    folder = chips.ChipFolder.from_settings(job.output.inputs["chip"].settings)
    data = chips.CalibrationData(files, recipe.features, recipe.loader.num_workers)
    table = sensitivity.measure(
        job.input("model") / FINAL, folder, recipe.sensitivity.candidates, batches, data, device()
    )
    log.info(
        "sensitivity: %d readings of %d dev utterances in %.0f s, at %s",
        len(table["rows"]) + 1,
        table["utterances"],
        table["seconds"],
        job.path,
    )
    job.commit({sensitivity.TABLE_FILE: table})


def report(recipe: RecipeSettings, jobs: list[Job]) -> None:
    """results.csv, RESULTS.md and a plot of every current result in work_dir (a whole sweep shares it)."""
    out = recipe.work_dir_path / "report"
    write_report([recipe.work_dir_path], out, f"Results: {recipe.data.name}")
    log.info("report: %s", out / "RESULTS.md")


def _chip_outputs(recipe: RecipeSettings) -> list[Output]:
    if not recipe.quantized:
        return []
    trained = graph.model_output(recipe, quantized=True)
    programmed = graph.chip_output(recipe, trained)
    return [programmed, *graph.chip_decodes(recipe, trained, programmed)]


def _sensitivity_outputs(recipe: RecipeSettings) -> list[Output]:
    if not recipe.quantized or not recipe.sensitivity.candidates:
        return []
    trained = graph.model_output(recipe, quantized=True)
    return [graph.sensitivity_output(recipe, trained, graph.chip_output(recipe, trained))]


STAGES: dict[str, Stage] = {
    "prepare": Stage(lambda recipe: [graph.manifests(recipe)], prepare),
    "tokenizer": Stage(lambda recipe: [graph.tokenizer(recipe)], make_tokenizer),
    "cmvn": Stage(lambda recipe: [graph.cmvn(recipe)], make_cmvn),
    "train_float": Stage(lambda recipe: [graph.model_output(recipe, quantized=False)], train_models, all_ranks=True),
    "train": Stage(lambda recipe: [graph.model_output(recipe, recipe.quantized)], train_models, all_ranks=True),
    "decode": Stage(
        lambda recipe: [decode for model in graph.systems(recipe) for decode in graph.decodes(recipe, model)],
        decode_models,
    ),
    "memsim": Stage(_chip_outputs, decode_on_chips),
    "sensitivity": Stage(_sensitivity_outputs, measure_sensitivity),
    "report": Stage(None, report),
}
