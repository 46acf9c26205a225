"""What a programmed chip does to each integer weight, measured by programming and reading cells: the table a
noise-aware training draws its weight errors from.

For every integer weight q in +-max_level, `samples` weights are programmed as a crossbar would (digit planes,
differential pairs, the config's programming: device-to-device and cycle-to-cycle variation included) and read,
noiselessly and for their read noise, at input fractions u = v / v_read of both signs. A weight's effective
value is what its pair of cells contributes to a column output, in units of one level step at a full-scale
input, divided by u: q itself on an ideal chip. Per q and u the table keeps the mean effective weight, its
spread over the programmed weights, and the standard deviation of one read. The non-linear, sign-asymmetric
I-V curve makes the mean depend on u; converters are left out (they act on column sums, not on weights).
"""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import torch
from torch import nn

from memsim.config import CrossbarConfig
from memsim.crossbar import ReadModel, digit_planes, program
from memsim.layers import MemristorLinear

FRACTIONS = (-1.0, -0.5, -0.25, -0.1, 0.1, 0.25, 0.5, 1.0)  # input fractions u = v / v_read read at


@dataclasses.dataclass(frozen=True)
class WeightErrorModel:
    """Per integer weight (`levels`) and input fraction (`fractions`): the mean effective weight (`mean`), its
    spread over programmed weights (`spread`) and one read's noise (`read_noise`), each [levels][fractions]."""

    levels: list[int]
    fractions: list[float]
    mean: list[list[float]]
    spread: list[list[float]]
    read_noise: list[list[float]]

    def gain(self) -> dict[int, float]:
        """Mean effective weight / q per nonzero q, averaged over the fractions."""
        return {q: sum(row) / len(row) / q for q, row in zip(self.levels, self.mean, strict=True) if q != 0}

    def moments(self, device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per level (index q + max_level): the effective weight's mean and total deviation (spread and one read's
        noise together), averaged over the fractions (deviations as root mean squares)."""
        mean = torch.tensor(self.mean, dtype=torch.float32, device=device).mean(1)
        spread, noise = (torch.tensor(t, dtype=torch.float32, device=device) for t in (self.spread, self.read_noise))
        return mean, (spread.square() + noise.square()).mean(1).sqrt()

    def sample(self, q: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Effective weights for integer weights q (any shape): each its level's mean plus its deviation times a
        fresh standard normal draw."""
        mean, deviation = self.moments(q.device)
        index = (q.round().long() + max(self.levels)).clamp_(0, len(self.levels) - 1)
        noise = torch.randn(q.shape, generator=generator, device=q.device, dtype=mean.dtype)
        return mean[index] + deviation[index] * noise


@torch.no_grad()
def weight_error_model(
    config: CrossbarConfig,
    samples: int = 4096,
    fractions: tuple[float, ...] = FRACTIONS,
    generator: torch.Generator | None = None,
) -> WeightErrorModel:
    """Program `samples` weights of every integer value of the config's crossbar and measure what each becomes
    (WeightErrorModel). Uses the config's device, programming, calibration and read noise."""
    if config.input_scheme != "amplitude":
        # its cells see only v_read, and each vector is many reads with their own noise: not what the table holds
        raise ValueError(
            f"weight_error_model measures weights under amplitude inputs; input_scheme={config.input_scheme!r} "
            "is not modelled (noise-aware training against a bit-serial chip)"
        )
    if samples < 2:
        raise ValueError(f"samples must be >= 2 to measure a spread, got {samples}")
    if not fractions or any(not -1 <= u <= 1 or u == 0 for u in fractions):
        raise ValueError(f"fractions must be nonzero input fractions in [-1, 1], got {fractions}")
    levels = list(range(-config.max_level, config.max_level + 1))
    q = torch.tensor(levels, dtype=torch.float32).repeat_interleave(samples)
    contents = digit_planes(q[None, :], config.planes, config.tile_size, config.levels_per_cell)
    r = program(contents, config, generator).r[:, : q.numel(), :, 0]  # [2, weights, planes]
    model = ReadModel(config)
    places = torch.tensor([float(config.levels_per_cell**k) for k in range(config.planes)])
    means, spreads, noises = [], [], []
    for u in fractions:
        v = torch.tensor([u * config.v_read])
        base, delta = model.conductances(v)
        # The pair's current difference per plane, in level steps at a full-scale input, then per unit input.
        effective = (v * delta * (r[0] - r[1]) / model.unit_current) @ places / u
        if model.noise is None:
            noise = torch.zeros_like(effective)
        else:
            conductance = base + r * delta  # [2, weights, planes]
            variance = (model.noise.variance_per_siemens(v) * conductance).sum(0) @ places.square()
            noise = variance.sqrt() / model.unit_current / abs(u)
        per_level = effective.view(len(levels), samples)
        means.append(per_level.mean(1))
        spreads.append(per_level.std(1))
        noises.append(noise.view(len(levels), samples).square().mean(1).sqrt())
    return WeightErrorModel(
        levels=levels,
        fractions=list(fractions),
        mean=torch.stack(means, 1).tolist(),
        spread=torch.stack(spreads, 1).tolist(),
        read_noise=torch.stack(noises, 1).tolist(),
    )


# Training steps between two programmings of WireWeightModel's nominal chip (each computes all of the layer's arrays'
# transfer matrices: a 384 -> 1536 layer's 144 arrays take tens of seconds on this project's 2-core CPUs,
# python benchmarks/ir_drop.py --read-cost).
WIRE_REFRESH_STEPS = 50


class WireWeightModel(nn.Module):
    """What a chip's resistive wires make of one layer's integer weights q [out, in], for IR-drop-aware training: the
    effective weights (MemristorLinear.effective_weight: through every array's transfer matrix, divided by the
    column gains under per-column calibration) of a chip holding q.

    A weight table per level (WeightErrorModel) cannot carry IR drop: what the wires leave of a weight depends on its
    position in its tile and on the weights sharing its row and column wires. So the layer's own weights are
    programmed, on the nominal chip of the config (nominal()): the wires' effect is deterministic, the variations'
    are what the other noise models train against. Programming and the transfer matrices cost seconds, so this is
    done every `refresh` training steps; in between, weights that changed since the last programming move by the
    layer's mean gain there (their neighbours' load changed little).

    A training step is told by the weight parameter's version (torch's in-place counter, which the optimizer's update
    advances): every call within one step (an LSTM gate's, once per frame) counts once. The state (the last
    programming, its mean gain, the steps seen) is in buffers, so a checkpoint carries it and a resumed run
    programs at the same steps as an uninterrupted one."""

    programmed_weights: torch.Tensor
    effective: torch.Tensor
    gain: torch.Tensor
    steps: torch.Tensor

    def __init__(self, config: CrossbarConfig, shape: tuple[int, int], refresh: int = WIRE_REFRESH_STEPS):
        super().__init__()
        if not config.wired:
            raise ValueError("WireWeightModel needs a chip whose wires have resistance (row_wire_resistance > 0)")
        if refresh < 1:
            raise ValueError(f"refresh must be >= 1 training step, got {refresh}")
        self.config, self.refresh = self.nominal(config), refresh
        self.register_buffer("programmed_weights", torch.zeros(shape))
        self.register_buffer("effective", torch.zeros(shape))
        self.register_buffer("gain", torch.ones(()))
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))
        self._steps = 0  # the buffer's value on the host: no device read per call
        self._weight_version: int | None = None  # the weight version of the step being trained
        self.register_load_state_dict_post_hook(WireWeightModel._restored)

    @staticmethod
    def nominal(config: CrossbarConfig) -> CrossbarConfig:
        """The chip the model programs: `config` without device or cycle variation, read noise or cycling before
        programming, and with default converters (effective weights are taken before the DAC and the ADC), so that
        only what shapes the effective weights tells two such chips apart."""
        defaults = CrossbarConfig()
        return dataclasses.replace(
            config,
            device_variation=False,
            cycle_variation=False,
            read_noise="none",
            random_cycles=0,
            precycle_pulses=0,
            stationary_cells=False,
            **{
                name: getattr(defaults, name)
                for name in ("dac_bits", "dac_grid", "keep_input_quantizer", "adc_precision_bits", "adc_range_bits")
            },
        )

    @torch.no_grad()
    def forward(self, q: torch.Tensor, version: int) -> torch.Tensor:
        """The effective weights of q at the training step whose weights have `version`."""
        if version != self._weight_version:
            self._weight_version = version
            if self._steps % self.refresh == 0:
                self._program(q)
            self._steps += 1
            self.steps.fill_(self._steps)
        return self.effective + self.gain * (q - self.programmed_weights)

    def _program(self, q: torch.Tensor) -> None:
        source = SimpleNamespace(  # a quantization-aware layer holding q, as MemristorLinear.from_linear reads one
            weight=q,
            bias=None,
            in_features=q.shape[1],
            out_features=q.shape[0],
            integer_weight=lambda: q,
            weight_scale=torch.ones((), device=q.device),
        )
        layer = MemristorLinear.from_linear(source, self.config, torch.Generator(q.device).manual_seed(0))
        effective = layer.effective_weight()
        self.programmed_weights.copy_(q)
        self.effective.copy_(effective)
        self.gain.copy_((effective * q).sum() / q.square().sum().clamp_min(1.0))

    @staticmethod
    def _restored(module: nn.Module, _incompatible: object) -> None:
        """After load_state_dict: the host's step count from the restored buffer (one read, at loading)."""
        assert isinstance(module, WireWeightModel)
        module._steps, module._weight_version = int(module.steps), None
