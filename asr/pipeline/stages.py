"""The stages: which outputs each makes (asr.pipeline.graph), and a short body that makes them by calling
the code it drives with typed settings and the folders of its inputs. Every body commits each output
(its record) as soon as that output is complete, so an interrupted stage keeps what it finished.
"""

import functools
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from itertools import groupby

import torch

import memsim
from asr import batch_memory, chips, tokenizer, train
from asr.checkpoint import load_model
from asr.data import tedlium
from asr.data.loader import estimate_cmvn, split_loader
from asr.decode import SCORE_FILE, build_decoders, decode_split, model_device, vocabulary
from asr.files import read_jsonl
from asr.pipeline import graph
from asr.pipeline.outputs import Job, Output
from asr.report import write_report
from asr.scoring import HEADER
from asr.settings import RecipeSettings
from asr.tokenizer import Tokenizer

log = logging.getLogger(__name__)

LAYER_ERROR_BATCHES = 4  # batches of the first decode split that measure a chip's layer errors and energy
# batches of the train split that memsim.adc=auto allocates ADC bits from, and that set the DAC range of the
# crossbar layers whose inputs the model did not quantize (memsim.kinds with conv)
ADC_CALIBRATION_BATCHES = 4


@dataclass(frozen=True)
class Stage:
    outputs: Callable[[RecipeSettings], list[Output]] | None  # None: no outputs of its own, runs every time
    make: Callable[[RecipeSettings, list[Job]], None]  # makes the given pending outputs
    all_ranks: bool = False  # under torchrun: training runs on every process, the rest on rank 0 only


def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def prepare(s: RecipeSettings, jobs: list[Job]) -> None:
    (job,) = jobs
    stats = tedlium.prepare(s.data.locate(), job.path, s.prepare.build())
    log.info("corpus statistics (%s):\n%s", job.path, tedlium.format_stats(stats))
    job.commit()


def make_tokenizer(s: RecipeSettings, jobs: list[Job]) -> None:
    (job,) = jobs
    t = s.tokenizer
    texts = [r["text"] for r in read_jsonl(job.input("manifests") / "train.jsonl")]
    tok = tokenizer.train(texts, job.path / graph.TOKENIZER_FILE, t.model_type, t.vocab_size, t.num_threads)
    log.info("tokenizer: %s, %d units including blank, at %s", t.model_type, tok.vocab_size, job.path)
    job.commit()


def make_cmvn(s: RecipeSettings, jobs: list[Job]) -> None:
    (job,) = jobs
    records = read_jsonl(job.input("manifests") / "train.jsonl")
    estimate_cmvn(records, s.features, seed=s.seed, num_workers=s.loader.num_workers).save(job.path / graph.CMVN_FILE)
    log.info("cmvn: from %d training segments at most, at %s", s.features.cmvn_segments, job.path)
    job.commit()


def train_models(s: RecipeSettings, jobs: list[Job]) -> None:
    """The float model (train_float) or the configured quantized system (train)."""
    for job in jobs:
        quantized = job.output.stage == "train"
        files = graph.data_files(s)
        init = job.input("init") / train.FINAL if "init" in job.output.inputs else s.train_settings(quantized).init_from
        model_config = s.model.build(vocab_size=Tokenizer(files.tokenizer).vocab_size, n_mels=s.features.num_mel_bins)
        train.train_model(
            model_config,
            s.quant_config(quantized),
            s.train_config(quantized),
            files=files,
            features=s.features,
            loader=s.loader,
            out_dir=job.path,
            init_from=init,
            fresh=not job.resumed,
        )
        job.commit()


def decode_jobs(
    s: RecipeSettings, model: torch.nn.Module, jobs: list[Job], before_split: Callable[[str], object] | None = None
) -> None:
    """Decode the splits and methods of `jobs` (one model's outputs) and commit each; before_split(split), if
    given, runs before each split is decoded (a chip reseeds its read noise there)."""
    files = graph.data_files(s)
    methods = sorted({j.output.settings["method"] for j in jobs})
    words = vocabulary(files.records("train"), s.decode.lexicon) if "beam" in methods else set()
    decoders = build_decoders(Tokenizer(files.tokenizer), words, s.decode, methods)
    by_split = defaultdict(list)
    for job in jobs:
        by_split[job.output.settings["split"]].append(job)
    rows = []
    for split, split_jobs in by_split.items():
        batching = _batching(s, model, files.records(split))  # before the reseed: the probe reads the chip too
        if before_split is not None:
            before_split(split)
        loader = _loader(s, split, batching["batch_seconds"])
        chosen = {j.output.settings["method"]: j for j in split_jobs}
        began = time.perf_counter()
        scores = decode_split(model, loader, {m: decoders[m] for m in chosen}, {m: j.path for m, j in chosen.items()})
        speed = _speed(time.perf_counter() - began, loader)
        log.info("%s: %.1f s of audio decoded in %.1f s, real-time factor %.3f", split, *speed.values())
        speed |= batching
        for method, job in chosen.items():
            job.commit({SCORE_FILE: {"split": split, "method": method, **scores[method].to_dict(), **speed}})
            rows.append(scores[method].row(job.output.relpath))
    log.info("WER:\n%s", "\n".join([HEADER, *rows]))


def _speed(seconds: float, loader) -> dict[str, float]:
    """Audio seconds, decoding seconds (the model and every decoder of the run together) and their ratio."""
    audio = sum(record["duration"] for record in loader.dataset.records)
    return {"audio_seconds": round(audio, 2), "decode_seconds": round(seconds, 2), "real_time_factor": seconds / audio}


def _batching(s: RecipeSettings, model: torch.nn.Module, records: list[dict]) -> dict:
    """The padded seconds per decoding batch of a split: decode.batch_seconds, or with decode.memory_fraction, what
    fits in that fraction of the free memory for this model and the split's longest utterance."""
    fraction = s.decode.memory_fraction
    if fraction is None:
        return {"batch_seconds": s.decode.batch_seconds}
    longest = max(r["duration"] for r in records)
    seconds, sizing = batch_memory.batch_seconds(model, longest, s.features.num_mel_bins, model_device(model), fraction)
    log.info(
        "decoding batches of %.0f s: %.1f MiB per second of audio, %.1f GiB free, fraction %g",
        seconds,
        sizing["bytes_per_second"] / 2**20,
        sizing["free_bytes"] / 2**30,
        fraction,
    )
    return sizing


def _loader(s: RecipeSettings, split: str, batch_seconds: float | None = None):
    """The untokenized, unaugmented batches of one split, as decoding reads them (batches of decode.batch_seconds
    unless given)."""
    return split_loader(
        graph.data_files(s),
        split,
        s.features,
        max_seconds=batch_seconds or s.decode.batch_seconds,
        num_workers=s.loader.num_workers,
        seed=s.seed,
        train=False,
        tokenize=False,
    )


def _tuning_loader(s: RecipeSettings, seed: int):
    """The training batches (augmented, tokenized) that chip-in-the-loop tuning of the instance `seed` reads."""
    files = graph.data_files(s)
    return split_loader(
        files,
        "train",
        s.features,
        max_seconds=s.loader.max_seconds,
        num_workers=s.loader.num_workers,
        seed=seed,
        train=True,
    )


def decode_models(s: RecipeSettings, jobs: list[Job]) -> None:
    for _, same_model in groupby(jobs, key=lambda j: j.output.inputs["model"].relpath):
        group = list(same_model)
        decode_jobs(s, load_model(group[0].input("model") / train.FINAL, device()), group)


def decode_on_chips(s: RecipeSettings, jobs: list[Job]) -> None:
    """Program each instance that has pending outputs onto a fresh chip, give its layers their ADCs (memsim.adc=auto,
    memsim.layer_adc), summarize the chip (instance 0: cells, layer errors, energy), and decode its pending splits
    and methods."""
    summaries = [j for j in jobs if "crossbar" in j.output.settings]
    by_instance = defaultdict(list)
    for job in jobs:
        if job not in summaries:
            by_instance[job.output.settings["instance"]].append(job)
    if summaries:
        by_instance.setdefault(0, [])
    model_path = jobs[0].input("model") / train.FINAL
    for instance, instance_jobs in sorted(by_instance.items()):
        seed = s.memsim.seed + instance
        config = s.chip_config(instance)
        m = s.memsim
        model, generator, seconds = chips.program(model_path, config, seed, device(), tuple(m.kinds))
        if "conv" in m.kinds:
            chips.calibrate_inputs(model, _loader(s, "train"), ADC_CALIBRATION_BATCHES)
        if m.adc == "auto" or m.layer_adc:
            auto = (m.adc_budget_bits, m.adc_coverage) if m.adc == "auto" else None
            chips.set_adcs(model, _loader(s, "train"), ADC_CALIBRATION_BATCHES, auto, m.layer_adc)
        tuning = None
        if m.tune_steps:
            losses = chips.tune(model, _tuning_loader(s, seed), m.tune_steps, m.tune_lr)
            tuning = {"steps": m.tune_steps, "lr": m.tune_lr, "loss_first": losses[0], "loss_last": losses[-1]}
            log.info("memsim instance %d tuned: loss %.2f -> %.2f", instance, losses[0], losses[-1])
        if instance == 0:
            for job in summaries:
                batches = _loader(s, s.decode.splits[0])
                errors = chips.layer_errors(model, model_path, batches, LAYER_ERROR_BATCHES)
                energy = memsim.measure_energy(model, chips.feeder(batches, LAYER_ERROR_BATCHES))
                summary = chips.chip_summary(model, config, seconds, errors, energy, tuning)
                log.info("chip %s:\n%s", job.output.relpath, memsim.format_summary(memsim.summary(model)))
                job.commit({graph.SUMMARY_FILE: summary})
        if instance_jobs:
            decode_jobs(s, model, instance_jobs, functools.partial(chips.reseed, generator, seed))
        log.info("memsim instance %d: programmed in %.1f s", instance, seconds)


def report(s: RecipeSettings, jobs: list[Job]) -> None:
    """results.csv, RESULTS.md and a plot of every current result in work_dir (a whole sweep shares it)."""
    out = s.work_dir_path / "report"
    write_report([s.work_dir_path], out, f"Results: {s.data.name}")
    log.info("report: %s", out / "RESULTS.md")


def _chip_outputs(s: RecipeSettings) -> list[Output]:
    if not s.quantized:
        return []
    trained = graph.model(s, quantized=True)
    programmed = graph.chip(s, trained)
    return [programmed, *graph.chip_decodes(s, trained, programmed)]


STAGES: dict[str, Stage] = {
    "prepare": Stage(lambda s: [graph.manifests(s)], prepare),
    "tokenizer": Stage(lambda s: [graph.tokenizer(s)], make_tokenizer),
    "cmvn": Stage(lambda s: [graph.cmvn(s)], make_cmvn),
    "train_float": Stage(lambda s: [graph.model(s, quantized=False)], train_models, all_ranks=True),
    "train": Stage(lambda s: [graph.model(s, s.quantized)], train_models, all_ranks=True),
    "decode": Stage(lambda s: [d for m in graph.systems(s) for d in graph.decodes(s, m)], decode_models),
    "memsim": Stage(_chip_outputs, decode_on_chips),
    "report": Stage(None, report),
}
