"""The trainer: one loop for float and quantization-aware training, on one device or many (DDP).

`fit` takes a model and a re-iterable of batches (dicts with `feats` [B, T, F], `feat_lens` [B], `tokens`
[B, U] padded, `token_lens` [B], as asr.data.batching.collate makes them), so it runs on synthetic batches as
well as on the corpus. Each iteration over `batches` is one epoch; if it (or a DataLoader's batch sampler)
has `set_epoch(epoch)`, that is called first, so a shuffling sampler can depend on (seed, epoch) only.

Resuming: `out_dir` holds atomic checkpoints (asr.checkpoint: every `checkpoint_every` steps and at the
end of each epoch) with model, optimizer, scheduler, every rank's RNG states, and the data position
(epoch, batches done in it). Run `fit` again on the same `out_dir` and it continues from the newest one
that loads (asr.checkpoint.newest_readable); with deterministic batches the result is bit-identical to a run
that was never interrupted. The recipe's loaders are deterministic at any number of workers: each item's
augmentation is seeded by (seed, epoch, index), and the loaders draw their worker seeds from generators of
their own, not from the global one that checkpoints save.
`final.pt` averages the newest `average_last` epoch-end checkpoints.

Utterances whose labels cannot fit their frames (CTC needs a frame per label plus one between repeated
labels) give no loss and no gradient; the trainer counts them (`dropped` in log.csv) and warns.

Under `torchrun` (WORLD_SIZE > 1) the model is wrapped in DistributedDataParallel (NCCL on CUDA, gloo on
CPU); each rank must be given its own shard of batches, the same number on every rank. Rank 0 writes
checkpoints and logs.
"""

import itertools
import logging
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm

from asr import checkpoint
from asr.data.features import FeatureSettings
from asr.data.loader import DataFiles, LoaderSettings, split_loader
from asr.errors import UserError
from asr.model import ConformerCTC, ModelConfig, count_parameters, ctc_loss, infeasible
from asr.quant import QuantConfig, QuantLinear, WeightQuantizer, max_level, quantize, quantized_layers
from asr.schedule import build_scheduler
from asr.tokenizer import BLANK_ID
from asr.train_log import TrainingLog

log = logging.getLogger(__name__)

# Settings a resumed run must share with the run that wrote the checkpoint (they shape the optimization).
RESUME_MUST_MATCH = (
    "optimizer",
    "lr",
    "betas",
    "weight_decay",
    "schedule",
    "pct_start",
    "div_factor",
    "final_div_factor",
    "warmup_steps",
    "epochs",
    "max_steps",
    "seed",
)


@dataclass
class TrainConfig:
    """What `configs/train/*.yaml` holds (the seed is the run's top-level `seed`)."""

    optimizer: str = "radam"  # "radam" (the paper) | "adamw"
    lr: float = 1e-3  # peak learning rate
    betas: tuple[float, float] = (0.9, 0.98)
    weight_decay: float = 1e-3  # on matrices and conv kernels only (see build_optimizer)
    schedule: str = "onecycle"  # "onecycle" (the paper) | "noam"
    pct_start: float = 0.3  # onecycle: fraction of the steps spent rising to the peak
    div_factor: float = 25.0  # onecycle: start at lr / div_factor
    final_div_factor: float = 1e4  # onecycle: end at lr / div_factor / final_div_factor
    warmup_steps: int = 25000  # noam: steps of linear warmup
    epochs: int = 50
    max_steps: int | None = None  # stop (and end the schedule) here if earlier than `epochs`
    grad_clip: float = 5.0  # max global gradient norm; 0 disables clipping
    checkpoint_every: int = 1000  # steps, for resuming; checkpoints are also written at the end of every epoch
    keep_checkpoints: int = 10  # epoch-end checkpoints kept
    average_last: int = 5  # final.pt holds the mean of the newest this-many epoch-end checkpoints
    log_every: int = 50
    bf16: bool = True  # bf16 autocast, on CUDA only
    seed: int = 0

    def __post_init__(self):
        if self.optimizer not in ("radam", "adamw"):
            raise ValueError(f"optimizer must be 'radam' or 'adamw', got {self.optimizer!r}")
        if self.schedule not in ("onecycle", "noam"):
            raise ValueError(f"schedule must be 'onecycle' or 'noam', got {self.schedule!r}")
        for name in ("lr", "epochs", "checkpoint_every", "log_every", "warmup_steps", "div_factor", "final_div_factor"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if not 0 < self.pct_start < 1:
            raise ValueError(f"pct_start must be in (0, 1), got {self.pct_start!r}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1 or None, got {self.max_steps!r}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {list(self.betas)!r}")
        if self.weight_decay < 0 or self.grad_clip < 0:
            raise ValueError("weight_decay and grad_clip must be >= 0")
        if self.average_last < 1 or self.keep_checkpoints < self.average_last:
            raise ValueError(
                f"average_last must be >= 1 and keep_checkpoints >= average_last, got "
                f"average_last={self.average_last} keep_checkpoints={self.keep_checkpoints}"
            )


def init_distributed() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment; joins the process group if needed."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    rank, local_rank = int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0))
    if world > 1 and not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return rank, world, local_rank


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Every generator's state as tensors and plain values (so checkpoints load with weights_only=True)."""
    kind, keys, position, has_gauss, cached = np.random.get_state(legacy=True)
    assert isinstance(keys, np.ndarray)
    return {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Weight decay on weight matrices and conv kernels only: not on biases, norms, attention position
    biases or learned quantization steps."""
    decay: list[nn.Parameter] = []
    rest: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (decay if name.endswith("weight") and p.dim() >= 2 else rest).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    if cfg.optimizer == "radam":
        return torch.optim.RAdam(groups, lr=cfg.lr, betas=cfg.betas, decoupled_weight_decay=True)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)


def _to(batch: dict, device: torch.device) -> tuple[torch.Tensor, ...]:
    keys = ("feats", "feat_lens", "tokens", "token_lens")
    return tuple(batch[k].to(device, non_blocking=True) for k in keys)


def _loss(model: nn.Module, batch: dict, device: torch.device, bf16: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch's CTC loss, and how many of its utterances the loss dropped as infeasible (on the device)."""
    feats, feat_lens, tokens, token_lens = _to(batch, device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16 and device.type == "cuda"):
        logits, lengths = model(feats, feat_lens)
    dropped = infeasible(lengths, tokens, token_lens).sum()
    return ctc_loss(logits, lengths, tokens, token_lens, blank=BLANK_ID), dropped


@torch.no_grad()
def evaluate(model: nn.Module, batches, device: torch.device, bf16: bool = True) -> float:
    """Mean per-utterance CTC loss over the batches (of all ranks, under DDP)."""
    was_training = model.training
    model.eval()
    total = torch.zeros(2, device=device, dtype=torch.float64)
    for batch in batches:
        n = len(batch["feat_lens"])
        total += torch.stack([_loss(model, batch, device, bf16)[0].double() * n, torch.tensor(n, device=device)])
    if dist.is_initialized():
        dist.all_reduce(total)
    model.train(was_training)
    return (total[0] / total[1]).item()


def _epoch_iterator(batches, epoch: int, skip: int):
    """The epoch's batches after the first `skip`, skipped eagerly (before the caller restores RNG states)."""
    sampler = getattr(batches, "batch_sampler", batches)  # a DataLoader's batch sampler, or the iterable
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
    iterator = iter(batches)
    for _ in itertools.islice(iterator, skip):
        pass
    return iterator


def _total_steps(batches, cfg: TrainConfig) -> int:
    limits = [cfg.max_steps] if cfg.max_steps else []
    if hasattr(batches, "__len__"):
        limits.append(cfg.epochs * len(batches))
    if not limits:
        raise ValueError("batches has no len(): set max_steps")
    return min(limits)


class _Run:
    """One training run: the state a checkpoint holds (weights, optimizer, schedule, RNG, data position) and
    the loop that advances it."""

    def __init__(
        self, model: nn.Module, batches, cfg: TrainConfig, out_dir: Path, device: torch.device | None, meta: dict | None
    ):
        self.rank, self.world, local_rank = init_distributed()
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", local_rank)
        self.model, self.batches, self.cfg, self.out_dir, self.meta = model, batches, cfg, out_dir, meta
        seed_everything(cfg.seed + self.rank)
        model.to(self.device).train()
        self.net = (
            model
            if self.world == 1
            else DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        )
        self.optimizer = build_optimizer(model, cfg)
        self.total_steps = _total_steps(batches, cfg)
        self.scheduler = build_scheduler(
            self.optimizer,
            cfg.schedule,
            self.total_steps,
            peak_lr=cfg.lr,
            pct_start=cfg.pct_start,
            div_factor=cfg.div_factor,
            final_div_factor=cfg.final_div_factor,
            warmup_steps=cfg.warmup_steps,
        )
        self.step = self.epoch = self.done_in_epoch = 0
        self.saved_step, self.pending_rng = -1, None
        out_dir.mkdir(parents=True, exist_ok=True)
        self.logbook = TrainingLog(out_dir) if self.rank == 0 else None

    def resume(self) -> None:
        """Continue from the newest checkpoint in out_dir, if any. RNG states are restored later, where the
        checkpoint took them relative to the epoch's batch iterator (see run)."""
        found = checkpoint.newest_readable(self.out_dir)
        if found is None:
            return
        newest, state = found
        same = lambda v: list(v) if isinstance(v, (list, tuple)) else v  # noqa: E731 (yaml lists, tuples)
        changed = [k for k in RESUME_MUST_MATCH if same(state["train_config"][k]) != same(getattr(self.cfg, k))]
        if changed:
            raise UserError(
                f"{self.out_dir} holds a run with other {', '.join(changed)}: resume it with the same "
                "settings, or train into another directory"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.epoch, self.done_in_epoch = state["step"], state["epoch"], state["done_in_epoch"]
        self.saved_step = self.step
        if len(state["rng"]) == self.world:
            self.pending_rng = state["rng"][self.rank]
        else:
            log.warning("checkpoint from %d processes, now %d: RNG states not restored", len(state["rng"]), self.world)
        if self.logbook:
            self.logbook.resume_at(self.step)
        log.info("resumed from %s (step %d, epoch %d)", newest, self.step, self.epoch)

    def save(self, epoch_end: bool = False) -> None:
        """A checkpoint of the current step; `epoch_end`: it ends an epoch (the one just finished, or the
        partial epoch a step limit stopped)."""
        states: list[Any] = [None] * self.world
        if self.world > 1:
            dist.all_gather_object(states, rng_state())
        else:
            states = [rng_state()]
        if self.rank == 0:
            checkpoint.save(
                {
                    "model": self.model.state_dict(),
                    "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(),
                    "rng": states,
                    "step": self.step,
                    "epoch": self.epoch,
                    "done_in_epoch": self.done_in_epoch,
                    "train_config": asdict(self.cfg),
                    "meta": self.meta,
                },
                checkpoint.path_for(
                    self.out_dir, self.step, self.epoch + (self.done_in_epoch > 0) if epoch_end else None
                ),
            )
            checkpoint.prune(self.out_dir, self.cfg.keep_checkpoints)
        self.saved_step = self.step

    def train_step(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        loss, dropped = _loss(self.net, batch, self.device, self.cfg.bf16)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        max_norm = self.cfg.grad_clip if self.cfg.grad_clip > 0 else float("inf")
        grad_norm = nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.step, self.done_in_epoch = self.step + 1, self.done_in_epoch + 1
        return loss.detach(), grad_norm, dropped

    def run(self, valid_batches=None) -> None:
        cfg = self.cfg
        progress = tqdm(
            total=self.total_steps, initial=self.step, disable=self.rank != 0, unit="step", dynamic_ncols=True
        )
        began, unlogged = time.perf_counter(), 0
        running, dropped = torch.zeros((), device=self.device), torch.zeros((), device=self.device, dtype=torch.long)
        while self.step < self.total_steps and self.epoch < cfg.epochs:
            # The restored RNG states go where the checkpoint took them: an epoch-end checkpoint before the next
            # epoch's iterator draws what it draws at its start, a mid-epoch one after.
            if self.done_in_epoch == 0:
                self._restore_rng()
            iterator = _epoch_iterator(self.batches, self.epoch, self.done_in_epoch)
            self._restore_rng()
            for batch in iterator:
                if self.step >= self.total_steps:  # checked here so that a finished epoch still ends below
                    break
                loss, grad_norm, batch_dropped = self.train_step(batch)
                # summed on the device: no sync per step
                running, dropped, unlogged = running + loss, dropped + batch_dropped, unlogged + 1
                progress.update()
                if self.step % cfg.log_every == 0 or self.step == self.total_steps:
                    mean_loss, n_dropped = running.item() / unlogged, int(dropped)
                    running, dropped, unlogged = torch.zeros_like(running), torch.zeros_like(dropped), 0
                    self._log(
                        "train",
                        mean_loss,
                        lr=self.scheduler.get_last_lr()[0],
                        grad_norm=grad_norm.item(),
                        dropped=n_dropped,
                        seconds=round(time.perf_counter() - began, 1),
                    )
                    if n_dropped and self.rank == 0:
                        log.warning(
                            "step %d: the CTC loss dropped %d utterance(s) in the last steps: fewer frames "
                            "than their labels need",
                            self.step,
                            n_dropped,
                        )
                    progress.set_postfix(loss=f"{mean_loss:.3f}", epoch=self.epoch)
                if self.step % cfg.checkpoint_every == 0:
                    self.save()
            else:
                if valid_batches is not None:
                    self._log("valid", evaluate(self.net, valid_batches, self.device, cfg.bf16))
                self.epoch, self.done_in_epoch = self.epoch + 1, 0
                self.save(epoch_end=True)
        if self.saved_step != self.step:
            self.save(epoch_end=True)  # a step limit ended the run inside an epoch
        progress.close()

    def _restore_rng(self) -> None:
        if self.pending_rng is not None:
            set_rng_state(self.pending_rng)
            self.pending_rng = None

    def _log(self, split: str, loss: float, **values) -> None:
        if self.logbook:
            self.logbook.write(step=self.step, epoch=self.epoch, split=split, loss=loss, **values)
        if split == "valid":
            log.info("epoch %d: valid loss %.4f", self.epoch, loss)

    def finish(self) -> nn.Module:
        """Load and write (out_dir/final.pt) the average of the newest `average_last` epoch-end checkpoints."""
        if self.world > 1:
            dist.barrier()
        final = checkpoint.average(checkpoint.epoch_checkpoints(self.out_dir)[-self.cfg.average_last :])
        self.model.load_state_dict(final)
        if self.logbook:
            checkpoint.save({"model": final, "meta": self.meta, "step": self.step}, self.out_dir / checkpoint.FINAL)
            self.logbook.close()
        if self.world > 1:  # the next stage of every rank may read final.pt
            dist.barrier()
        return self.model


def fit(
    model: nn.Module,
    batches,
    cfg: TrainConfig,
    out_dir: str | Path,
    *,
    valid_batches=None,
    device: str | torch.device | None = None,
    meta: dict | None = None,
) -> nn.Module:
    """Train `model` (float, or already quantized with asr.quant.quantize) and return it with the weights of
    `out_dir/final.pt`: the average of the newest `average_last` epoch-end checkpoints. Resumes from out_dir's newest
    checkpoint if there is one. `meta` (e.g. the model and quant configs) goes into every checkpoint so a
    checkpoint alone can rebuild its model (see checkpoint.load_model)."""
    run = _Run(model, batches, cfg, Path(out_dir), None if device is None else torch.device(device), meta)
    run.resume()
    run.run(valid_batches)
    return run.finish()


class RankShard(Sampler):
    """Every world-th batch of a batch sampler, starting at `rank`, the same number on every rank (DDP)."""

    def __init__(self, batch_sampler, rank: int, world: int):
        self.batch_sampler, self.rank, self.world = batch_sampler, rank, world

    def set_epoch(self, epoch: int) -> None:
        self.batch_sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.batch_sampler) // self.world

    def __iter__(self):
        return itertools.islice(iter(self.batch_sampler), self.rank, self.world * len(self), self.world)


def _rank_loader(loader: DataLoader, rank: int, world: int) -> DataLoader:
    if world == 1:
        return loader
    return DataLoader(
        loader.dataset,
        batch_sampler=RankShard(loader.batch_sampler, rank, world),
        collate_fn=loader.collate_fn,
        num_workers=loader.num_workers,
        persistent_workers=loader.persistent_workers,
        generator=loader.generator,
    )


def initial_model(model_config: ModelConfig, quant_config: QuantConfig, init_from: Path | None) -> ConformerCTC:
    """A model to train, quantized per quant_config, its weights from init_from if given: a float model's (loaded
    before quantizing, so LSQ steps start from them) or a quantization-aware model's (loaded after quantizing, with
    its quantizer ranges; a layer or convolution whose bits differ from that model's keeps its LSQ range, as
    WeightQuantizer.at_bits does, where a max-based range needs nothing)."""
    model = ConformerCTC(model_config)
    if init_from is None:
        quantize(model, quant_config)
        return model
    start = checkpoint.weights(init_from)
    if set(start) <= set(model.state_dict()):  # a float model's weights
        model.load_state_dict(start)
        quantize(model, quant_config)
        return model
    quantize(model, quant_config)
    try:
        model.load_state_dict(start)
        source = QuantConfig(**checkpoint.load(init_from)["meta"]["quant"])
    except (RuntimeError, KeyError, TypeError, ValueError) as error:
        raise ValueError(f"init_from {init_from}: its quantized layers do not fit this model's: {error}") from None
    for name, module in model.named_modules():
        quantizer = getattr(module, "weight_quant", None)
        if isinstance(quantizer, WeightQuantizer) and quantizer.step is not None:
            # a crossbar layer's bits may be its own (layer_bits); a convolution's are the model's weight bits
            trained_at = source.for_layer(name).weight_bits if isinstance(module, QuantLinear) else source.weight_bits
            if trained_at is not None:
                with torch.no_grad():
                    quantizer.step.mul_(max_level(trained_at) / quantizer.qmax)
    return model


def train_model(
    model_config: ModelConfig,
    quant_config: QuantConfig,
    train_config: TrainConfig,
    *,
    files: DataFiles,
    features: FeatureSettings,
    loader: LoaderSettings,
    out_dir: Path,
    init_from: Path | None = None,
    fresh: bool = True,
) -> None:
    """A Conformer-CTC trained float or quantization-aware on the prepared data, into out_dir; `final.pt`
    there holds the averaged weights and the configs (checkpoint.load_model rebuilds the model).

    init_from: a checkpoint whose model weights start the run: the float model, for QAT fine-tuning, or a
    quantization-aware model, whose quantizer ranges come along (fine-tuning a uniform model at mixed bits).
    fresh: start over, deleting what out_dir holds; else resume from its newest checkpoint. Under torchrun
    every rank calls this; rank 0 alone clears out_dir, and every rank resumes after it did.
    """
    rank, world, _ = init_distributed()
    if fresh and rank == 0:
        clear_run(out_dir)
    if world > 1:
        dist.barrier()
    torch.manual_seed(train_config.seed)
    model = initial_model(model_config, quant_config, init_from)
    log.info("model: %s parameters, quantized layers: %d", f"{count_parameters(model):,}", len(quantized_layers(model)))
    batches = {
        split: _rank_loader(
            split_loader(
                files,
                split,
                features,
                max_seconds=loader.max_seconds,
                num_workers=loader.num_workers,
                seed=train_config.seed,
                train=split == "train",
            ),
            rank,
            world,
        )
        for split in ("train", "dev")
    }
    fit(
        model,
        batches["train"],
        train_config,
        out_dir,
        valid_batches=batches["dev"],
        meta={"model": asdict(model_config), "quant": asdict(quant_config)},
    )


def clear_run(out_dir: Path) -> None:
    """Delete a training run's files (checkpoints, final.pt, logs), so a new run does not resume from them."""
    for path in [*checkpoint.checkpoints(out_dir), out_dir / checkpoint.FINAL, *TrainingLog.files(out_dir)]:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
