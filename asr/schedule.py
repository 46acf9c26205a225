"""Learning-rate schedules: the paper's one-cycle policy and Noam-style warmup with inverse-sqrt decay."""

import torch
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, OneCycleLR


def noam_factor(step: int, warmup_steps: int) -> float:
    """Linear warmup to 1 at `warmup_steps`, then warmup_steps^0.5 / step^0.5 (ESPnet's WarmupLR)."""
    step = step + 1
    return min(step / warmup_steps, (warmup_steps / step) ** 0.5)


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    kind: str,
    total_steps: int,
    *,
    peak_lr: float,
    pct_start: float = 0.3,
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
    warmup_steps: int = 25000,
) -> LRScheduler:
    """`onecycle`: torch's OneCycleLR over total_steps (cosine rise for pct_start, then cosine decay);
    `noam`: the optimizer's lr times noam_factor(step). Both are stepped once per optimizer step."""
    if kind == "onecycle":
        return OneCycleLR(
            optimizer,
            max_lr=peak_lr,
            total_steps=total_steps,
            pct_start=pct_start,
            div_factor=div_factor,
            final_div_factor=final_div_factor,
        )
    if kind == "noam":  # the optimizer's own lr is the peak
        return LambdaLR(optimizer, lambda step: noam_factor(step, warmup_steps))
    raise ValueError(f"schedule must be 'onecycle' or 'noam', got {kind!r}")
