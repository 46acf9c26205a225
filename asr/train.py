"""The trainer: one loop for float and quantization-aware training, on one device or many (DDP).

`fit` takes a model and a re-iterable of batches (dicts with `feats` [B, T, F], `feat_lens` [B], `tokens`
[B, U] padded, `token_lens` [B], as asr.data.batching.collate makes them), so it runs on synthetic batches as
well as on the corpus. Each iteration over `batches` is one epoch; if it (or a DataLoader's batch sampler)
has `set_epoch(epoch)`, that is called first, so a shuffling sampler can depend on (seed, epoch) only.

Resuming: `out_dir` holds atomic checkpoints `ckpt-<step>.pt` (every `checkpoint_every` steps and at the
end of each epoch) with model, optimizer, scheduler, every rank's RNG states, and the data position
(epoch, batches done in it). Run `fit` again on the same `out_dir` and it continues from the newest one;
with deterministic batches the result is bit-identical to a run that was never interrupted (data
augmentation drawn in loader worker processes is only as reproducible as the data side seeds it).

Under `torchrun` (WORLD_SIZE > 1) the model is wrapped in DistributedDataParallel (NCCL on CUDA, gloo on
CPU); each rank must be given its own shard of batches, the same number on every rank. Rank 0 writes
checkpoints and logs.
"""

import itertools
import logging
import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm

from asr import checkpoint
from asr.data.loader import make_loader
from asr.errors import UserError
from asr.model import ConformerCTC, ModelConfig, count_parameters, ctc_loss
from asr.quant import QuantConfig, quantize, quantized_layers
from asr.schedule import build_scheduler
from asr.tokenizer import BLANK_ID, Tokenizer
from asr.train_log import TrainingLog
from asr.workdir import WorkDir

log = logging.getLogger(__name__)

# Settings a resumed run must share with the run that wrote the checkpoint (they shape the optimization).
RESUME_MUST_MATCH = ("optimizer", "lr", "betas", "weight_decay", "schedule", "pct_start", "div_factor",
                     "final_div_factor", "warmup_steps", "epochs", "max_steps", "seed")


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
    checkpoint_every: int = 1000  # steps; checkpoints are also written at the end of every epoch
    keep_checkpoints: int = 10
    average_last: int = 5  # final.pt holds the mean of the newest this-many checkpoints
    log_every: int = 50
    bf16: bool = True  # bf16 autocast, on CUDA only
    seed: int = 0

    def __post_init__(self):
        if self.optimizer not in ("radam", "adamw"):
            raise ValueError(f"optimizer must be 'radam' or 'adamw', got {self.optimizer!r}")
        if self.keep_checkpoints < max(1, self.average_last):
            raise ValueError("keep_checkpoints must be >= max(1, average_last)")


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
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Weight decay on weight matrices and conv kernels only: not on biases, norms, attention position
    biases or learned quantization steps."""
    decay, rest = [], []
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


def _loss(model: nn.Module, batch: dict, device: torch.device, bf16: bool) -> torch.Tensor:
    feats, feat_lens, tokens, token_lens = _to(batch, device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16 and device.type == "cuda"):
        logits, lengths = model(feats, feat_lens)
    return ctc_loss(logits, lengths, tokens, token_lens, blank=BLANK_ID)


@torch.no_grad()
def evaluate(model: nn.Module, batches, device: torch.device, bf16: bool = True) -> float:
    """Mean per-utterance CTC loss over the batches (of all ranks, under DDP)."""
    was_training = model.training
    model.eval()
    total = torch.zeros(2, device=device, dtype=torch.float64)
    for batch in batches:
        n = len(batch["feat_lens"])
        total += torch.stack([_loss(model, batch, device, bf16).double() * n, torch.tensor(n, device=device)])
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

    def __init__(self, model: nn.Module, batches, cfg: TrainConfig, out_dir: Path, device: torch.device | None,
                 meta: dict | None):
        self.rank, self.world, local_rank = init_distributed()
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", local_rank)
        self.model, self.batches, self.cfg, self.out_dir, self.meta = model, batches, cfg, out_dir, meta
        seed_everything(cfg.seed + self.rank)
        model.to(self.device).train()
        self.net = model if self.world == 1 else DistributedDataParallel(
            model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.optimizer = build_optimizer(model, cfg)
        self.total_steps = _total_steps(batches, cfg)
        self.scheduler = build_scheduler(
            self.optimizer, cfg.schedule, self.total_steps, peak_lr=cfg.lr, pct_start=cfg.pct_start,
            div_factor=cfg.div_factor, final_div_factor=cfg.final_div_factor, warmup_steps=cfg.warmup_steps)
        self.step = self.epoch = self.done_in_epoch = 0
        self.saved_step, self.pending_rng = -1, None
        out_dir.mkdir(parents=True, exist_ok=True)
        self.logbook = TrainingLog(out_dir) if self.rank == 0 else None

    def resume(self) -> None:
        """Continue from the newest checkpoint in out_dir, if any. RNG states are restored later, once the
        epoch's batch iterator exists (see run)."""
        existing = checkpoint.checkpoints(self.out_dir)
        if not existing:
            return
        state = checkpoint.load(existing[-1])
        same = lambda v: list(v) if isinstance(v, (list, tuple)) else v  # noqa: E731 (yaml lists, tuples)
        changed = [k for k in RESUME_MUST_MATCH if same(state["train_config"][k]) != same(getattr(self.cfg, k))]
        if changed:
            raise UserError(f"{self.out_dir} holds a run with other {', '.join(changed)}: resume it with the same "
                            "settings, or train into another directory")
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
        log.info("resumed from %s (step %d, epoch %d)", existing[-1], self.step, self.epoch)

    def save(self) -> None:
        states = [None] * self.world
        if self.world > 1:
            dist.all_gather_object(states, rng_state())
        else:
            states = [rng_state()]
        if self.rank == 0:
            checkpoint.save({
                "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "rng": states, "step": self.step, "epoch": self.epoch,
                "done_in_epoch": self.done_in_epoch, "train_config": asdict(self.cfg), "meta": self.meta,
            }, checkpoint.path_for(self.out_dir, self.step))
            checkpoint.prune(self.out_dir, self.cfg.keep_checkpoints)
        self.saved_step = self.step

    def train_step(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        loss = _loss(self.net, batch, self.device, self.cfg.bf16)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        max_norm = self.cfg.grad_clip if self.cfg.grad_clip > 0 else float("inf")
        grad_norm = nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.step, self.done_in_epoch = self.step + 1, self.done_in_epoch + 1
        return loss.detach(), grad_norm

    def run(self, valid_batches=None) -> None:
        cfg = self.cfg
        progress = tqdm(total=self.total_steps, initial=self.step, disable=self.rank != 0, unit="step",
                        dynamic_ncols=True)
        began, running, unlogged = time.perf_counter(), torch.zeros((), device=self.device), 0
        while self.step < self.total_steps and self.epoch < cfg.epochs:
            iterator = _epoch_iterator(self.batches, self.epoch, self.done_in_epoch)
            if self.pending_rng is not None:  # after the iterator drew whatever it draws at epoch start
                set_rng_state(self.pending_rng)
                self.pending_rng = None
            for batch in iterator:
                if self.step >= self.total_steps:  # checked here so that a finished epoch still ends below
                    break
                loss, grad_norm = self.train_step(batch)
                running, unlogged = running + loss, unlogged + 1  # summed on the device: no sync per step
                progress.update()
                if self.step % cfg.log_every == 0 or self.step == self.total_steps:
                    mean_loss = running.item() / unlogged
                    running, unlogged = torch.zeros_like(running), 0
                    self._log("train", mean_loss, lr=self.scheduler.get_last_lr()[0], grad_norm=grad_norm.item(),
                              seconds=round(time.perf_counter() - began, 1))
                    progress.set_postfix(loss=f"{mean_loss:.3f}", epoch=self.epoch)
                if self.step % cfg.checkpoint_every == 0:
                    self.save()
            else:
                if valid_batches is not None:
                    self._log("valid", evaluate(self.net, valid_batches, self.device, cfg.bf16))
                self.epoch, self.done_in_epoch = self.epoch + 1, 0
                self.save()
        if self.saved_step != self.step:
            self.save()
        progress.close()

    def _log(self, split: str, loss: float, **values) -> None:
        if self.logbook:
            self.logbook.write(step=self.step, epoch=self.epoch, split=split, loss=loss, **values)
        if split == "valid":
            log.info("epoch %d: valid loss %.4f", self.epoch, loss)

    def finish(self) -> nn.Module:
        """Load and write (out_dir/final.pt) the average of the newest `average_last` checkpoints."""
        if self.world > 1:
            dist.barrier()
        final = checkpoint.average(checkpoint.checkpoints(self.out_dir)[-max(1, self.cfg.average_last):])
        self.model.load_state_dict(final)
        if self.logbook:
            checkpoint.save({"model": final, "meta": self.meta, "step": self.step}, self.out_dir / "final.pt")
            self.logbook.close()
        return self.model


def fit(model: nn.Module, batches, cfg: TrainConfig, out_dir: str | Path, *, valid_batches=None,
        device: str | torch.device | None = None, meta: dict | None = None) -> nn.Module:
    """Train `model` (float, or already quantized with asr.quant.quantize) and return it with the weights of
    `out_dir/final.pt`: the average of the newest `average_last` checkpoints. Resumes from out_dir's newest
    checkpoint if there is one. `meta` (e.g. the model and quant configs) goes into every checkpoint so a
    checkpoint alone can rebuild its model (see load_model)."""
    run = _Run(model, batches, cfg, Path(out_dir), device, meta)
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
    return DataLoader(loader.dataset, batch_sampler=RankShard(loader.batch_sampler, rank, world),
                      collate_fn=loader.collate_fn, num_workers=loader.num_workers,
                      persistent_workers=loader.persistent_workers)


def _fields(node: DictConfig, drop: tuple[str, ...] = ("name",)) -> dict:
    return {k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if k not in drop}


def train(cfg: DictConfig) -> None:
    """The `train` stage: a Conformer-CTC (cfg.model) trained float or quantization-aware (cfg.quant) on the
    prepared corpus, into cfg.train.exp_dir; `final.pt` there holds the averaged weights and the configs.

    QAT from a float checkpoint: train.init_from=<exp_dir>/final.pt. Several GPUs or CPU processes:
    torchrun --nproc_per_node=N scripts/run.py ... stages=[train].
    """
    rank, world, _ = init_distributed()
    work = WorkDir(cfg.work_dir)
    model_cfg = ModelConfig(vocab_size=Tokenizer(work.tokenizer).vocab_size, n_mels=cfg.features.num_mel_bins,
                            **_fields(cfg.model))
    quant_cfg = QuantConfig(**_fields(cfg.quant))
    torch.manual_seed(cfg.seed)
    model = ConformerCTC(model_cfg)
    if cfg.train.init_from:
        model.load_state_dict(checkpoint.load(cfg.train.init_from)["model"])
    quantize(model, quant_cfg)
    log.info("model: %s parameters, quantized layers: %d", f"{count_parameters(model):,}", len(quantized_layers(model)))
    fit(model, _rank_loader(make_loader(cfg, "train", train=True), rank, world),
        TrainConfig(seed=cfg.seed, **_fields(cfg.train, drop=("exp_dir", "init_from"))), cfg.train.exp_dir,
        valid_batches=_rank_loader(make_loader(cfg, "dev", train=False), rank, world),
        meta={"model": asdict(model_cfg), "quant": asdict(quant_cfg)})


def load_model(path: str | Path, device: str | torch.device = "cpu") -> ConformerCTC:
    """Rebuild a trained model (float or quantization-aware) from a checkpoint that `train` wrote."""
    state = checkpoint.load(path)
    model = ConformerCTC(ModelConfig(**state["meta"]["model"]))
    quantize(model, QuantConfig(**state["meta"]["quant"]))
    model.load_state_dict(state["model"])
    return model.to(device).eval()
