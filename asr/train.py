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
from torch import nn
from omegaconf import DictConfig, OmegaConf
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm

from asr import checkpoint
from asr.model import ConformerCTC, ModelConfig, count_parameters, ctc_loss
from asr.quant import QuantConfig, quantize, quantized_layers
from asr.schedule import build_scheduler
from asr.train_log import TrainingLog

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """What `configs/train/*.yaml` holds (the seed is the run's top-level `seed`)."""

    optimizer: str = "radam"  # "radam" (the paper) | "adamw"
    lr: float = 1e-3  # peak learning rate
    betas: tuple[float, float] = (0.9, 0.98)
    weight_decay: float = 1e-3  # on matrices and conv kernels only, never on biases, norms or LSQ steps
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
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    rest = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
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
    return ctc_loss(logits, lengths, tokens, token_lens, blank=0)


@torch.no_grad()
def evaluate(model: nn.Module, batches, device: torch.device, bf16: bool = True) -> float:
    """Mean per-utterance CTC loss over the batches (of all ranks, under DDP)."""
    model.eval()
    total = torch.zeros(2, device=device, dtype=torch.float64)
    for batch in batches:
        n = len(batch["feat_lens"])
        total += torch.stack([_loss(model, batch, device, bf16).double() * n, torch.tensor(n, device=device)])
    if dist.is_initialized():
        dist.all_reduce(total)
    model.train()
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


def fit(model: nn.Module, batches, cfg: TrainConfig, out_dir: str | Path, *, valid_batches=None,
        device: str | torch.device | None = None, meta: dict | None = None) -> nn.Module:
    """Train `model` (float or already quantized with asr.quant.quantize) and return it with the weights of
    `out_dir/final.pt`: the average of the newest `average_last` checkpoints. `meta` (e.g. the model and
    quant configs) is stored in every checkpoint so a checkpoint alone can rebuild its model."""
    rank, world, local_rank = init_distributed()
    out_dir = Path(out_dir)
    if device is None:
        device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    seed_everything(cfg.seed + rank)
    model.to(device).train()
    net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
        if world > 1 else model
    optimizer = build_optimizer(model, cfg)
    total_steps = _total_steps(batches, cfg)
    scheduler = build_scheduler(optimizer, cfg.schedule, total_steps, peak_lr=cfg.lr, pct_start=cfg.pct_start,
                                div_factor=cfg.div_factor, final_div_factor=cfg.final_div_factor,
                                warmup_steps=cfg.warmup_steps)
    step, epoch, done_in_epoch, pending_rng = 0, 0, 0, None
    out_dir.mkdir(parents=True, exist_ok=True)
    logbook = TrainingLog(out_dir) if rank == 0 else None
    existing = checkpoint.checkpoints(out_dir)
    if existing:
        state = checkpoint.load(existing[-1])
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, epoch, done_in_epoch = state["step"], state["epoch"], state["done_in_epoch"]
        pending_rng = state["rng"][rank] if len(state["rng"]) == world else None
        if logbook:
            logbook.resume_at(step)
        log.info("resumed from %s (step %d, epoch %d)", existing[-1], step, epoch)

    def save() -> None:
        nonlocal saved_step
        states = [None] * world
        if world > 1:
            dist.all_gather_object(states, rng_state())
        else:
            states = [rng_state()]
        if rank == 0:
            checkpoint.save({
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "rng": states, "step": step, "epoch": epoch,
                "done_in_epoch": done_in_epoch, "train_config": asdict(cfg), "meta": meta,
            }, checkpoint.path_for(out_dir, step))
            checkpoint.prune(out_dir, cfg.keep_checkpoints)
        saved_step = step

    progress = tqdm(total=total_steps, initial=step, disable=rank != 0, unit="step", dynamic_ncols=True)
    saved_step, began = (step if existing else -1), time.perf_counter()
    running, unlogged = torch.zeros((), device=device), 0
    while step < total_steps and epoch < cfg.epochs:
        iterator = _epoch_iterator(batches, epoch, done_in_epoch)
        if pending_rng is not None:  # after the iterator drew whatever it draws at epoch start
            set_rng_state(pending_rng)
            pending_rng = None
        for batch in iterator:
            loss = _loss(net, batch, device, cfg.bf16)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
            optimizer.step()
            scheduler.step()
            step, done_in_epoch = step + 1, done_in_epoch + 1
            running += loss.detach()
            unlogged += 1
            progress.update()
            if step % cfg.log_every == 0 or step == total_steps:
                mean_loss = running.item() / unlogged
                running.zero_()
                unlogged = 0
                if logbook:
                    logbook.write(step=step, epoch=epoch, split="train", loss=mean_loss, lr=scheduler.get_last_lr()[0],
                                  grad_norm=grad_norm.item(), seconds=round(time.perf_counter() - began, 1))
                progress.set_postfix(loss=f"{mean_loss:.3f}", epoch=epoch)
            if step % cfg.checkpoint_every == 0:
                save()
            if step >= total_steps:
                break
        else:
            epoch, done_in_epoch = epoch + 1, 0
            if valid_batches is not None:
                valid = evaluate(net, valid_batches, device, cfg.bf16)
                if logbook:
                    logbook.write(step=step, epoch=epoch - 1, split="valid", loss=valid)
                log.info("epoch %d: valid loss %.4f", epoch - 1, valid)
            save()
    if saved_step != step:
        save()
    progress.close()
    if world > 1:
        dist.barrier()
    final = checkpoint.average(checkpoint.checkpoints(out_dir)[-max(1, cfg.average_last):])
    model.load_state_dict(final)
    if rank == 0:
        checkpoint.save({"model": final, "meta": meta, "step": step}, out_dir / "final.pt")
        logbook.close()
    return model


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
    from asr.data.loader import make_loader  # the data side's heavy imports only when training for real
    from asr.tokenizer import Tokenizer
    from asr.workdir import WorkDir

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
