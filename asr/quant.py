"""Quantization-aware training (QAT): fake-quantized linear layers with straight-through gradients.

The protocol of the paper's released code (docs/sources.md): weights as per-tensor symmetric integers in
+-(2^(b-1)-1) (b = 1.5 means ternary) with the scale from a MinMax observer, inputs quantized to 8 bits,
straight-through estimator, QAT from scratch. Options: per-channel weight scales, learned step sizes (LSQ,
Esser et al. 2020), an exponential moving average instead of the running max for the input range.

Only the layers a crossbar holds are quantized (`CROSSBAR_LAYERS`: feed-forward, attention in/out
projections, conv-module pointwise layers; and a BLSTM encoder's gate layers, once its nn.LSTM is a
memsim.LinearLSTM); the frontend, the output layer and everything else stay float.
Pass the same patterns to `memsim.convert(..., include=CROSSBAR_LAYERS)` so the two sides agree.

The rest of that code's QAT, each an option (all on in `configs/quant/paper.yaml`): the outputs of the
crossbar layers quantized too (`output_bits`), the digital attention products quantized at the weight bit
width (`quantize_attention`: queries, keys, values and the attention weights), the depthwise convolution's
weights (`quantize_depthwise`) and its input and output (`depthwise_io_bits`, memristor_v5.py).

Noise-aware training (`noise`, off by default): in training only, each step the crossbar layers' integer weights
are replaced by what a chip would hold, with the gradient passed straight through to the quantized weights:
Gaussian noise of `noise_std` x the weight range ("gauss", as the paper's authors tried later with deviations of
0.0125-0.1, docs/sources.md), draws from a memsim.WeightErrorModel measured from a chip's own cells ("chip": its
gain per level and input sign, its programming spread and read noise), or what a chip's resistive wires make of the
layer's own weights ("wires": memsim.WireWeightModel, the nominal chip of `noise_chip` programmed with them every
few steps).
"""

import copy
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from asr.model.attention import SelfAttention
from asr.model.conformer import ConvModule
from memsim import CrossbarConfig, LinearLSTM, WeightErrorModel, WireWeightModel

M = TypeVar("M", bound=nn.Module)

# Module names (fnmatch patterns over named_modules() of asr.model.ConformerCTC) that a crossbar holds.
CROSSBAR_LAYERS = (
    "blocks.*.ff[12].w[12]",
    "blocks.*.attn.in_proj",
    "blocks.*.attn.out_proj",
    "blocks.*.conv.pointwise[12]",
)
# The projections of relative position encodings: digital by default, on the chip with quant=qat_pos
POSITION_LAYERS = "blocks.*.attn.pos_proj"


def max_level(bits: float) -> int:
    """Largest integer magnitude for b-bit symmetric weights: 2^(b-1) - 1; 1.5 bits (ternary) gives 1."""
    if (
        isinstance(bits, bool)
        or not isinstance(bits, (int, float))
        or not (bits == 1.5 or (float(bits).is_integer() and 2 <= bits <= 16))
    ):
        raise ValueError(f"bits must be 1.5 (ternary) or an integer from 2 to 16, got {bits!r}")
    return 1 if bits == 1.5 else 2 ** (int(bits) - 1) - 1


class _RoundClamp(torch.autograd.Function):
    """round(clamp(v, -qmax, qmax)) whose gradient is 1 inside the range and 0 where v was clipped."""

    @staticmethod
    def forward(ctx, v: torch.Tensor, qmax: int) -> torch.Tensor:
        inside = v.abs() <= qmax
        ctx.save_for_backward(inside)
        return v.clamp(-qmax, qmax).round()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (inside,) = ctx.saved_tensors
        return grad * inside, None


def fake_quantize(x: torch.Tensor, scale: torch.Tensor, qmax: int) -> torch.Tensor:
    """round(clamp(x / scale)) * scale with straight-through gradients.

    d/dx is 1 inside the range and 0 outside; d/dscale is round(x/s) - x/s inside and +-qmax outside,
    which is exactly LSQ's step-size gradient when the scale is a learned parameter.
    """
    return _RoundClamp.apply(x / scale, qmax) * scale


def _scale_grad(x: torch.Tensor, factor: float) -> torch.Tensor:
    """x in the forward pass, gradient multiplied by `factor` in the backward pass."""
    return (x - x * factor).detach() + x * factor


WEIGHT_SCALES = ("minmax", "running_max", "lsq")
NOISES = ("none", "gauss", "chip", "wires")


@dataclass
class QuantConfig:
    """What `configs/quant/*.yaml` holds. weight_bits None: no quantization (the float model)."""

    weight_bits: float | None = 3
    # "minmax": max|W| of the current weights; "running_max": the largest max|W| seen in training (the paper
    # code's MinMaxObserver); "lsq": a learned step size
    weight_scale: str = "minmax"
    per_channel: bool = False  # one scale per output row (memsim maps per-tensor scales only)
    input_bits: int = 8
    input_momentum: float | None = None  # None: running max (MinMax, the paper); else EMA of each batch's max
    output_bits: int | None = None  # quantize the outputs of the crossbar layers too (8 in the paper's code)
    quantize_attention: bool = False  # queries, keys, values and attention weights at weight_bits
    quantize_depthwise: bool = False  # the conv module's depthwise weights at weight_bits
    # with quantize_depthwise: the depthwise convolution's input and output quantized too, at these bits (8 in
    # memristor_v5.py: dconv_1_in_quant, dconv_1_out_quant); None: they stay float
    depthwise_io_bits: int | None = None
    quantize_frontend: bool = False  # the frontend's convolutions' weights at weight_bits (with "frontend.out"
    # in `include`, all of the frontend: configs/quant/qat_all.yaml)
    include: tuple[str, ...] = CROSSBAR_LAYERS
    exclude: tuple[str, ...] = ()
    # Mixed precision: {layer-name pattern: weight bits} for crossbar layers whose bits differ from weight_bits
    # (the first match wins; every pattern must match a crossbar layer). The chip maps each layer with its bits
    # (memsim.ChipSpec.layer_bits). The attention, depthwise and frontend quantizers keep weight_bits.
    layer_bits: dict[str, float] = dataclasses.field(default_factory=dict)
    # Noise-aware training of the crossbar layers (training only; fresh draws every step, straight-through):
    # "gauss", integer weights plus Gaussian noise of noise_std x the weight range (max|W|); "chip", effective
    # weights drawn from noise_table, a memsim.WeightErrorModel as a dict (the chip's own statistics); "wires", the
    # effective weights through the wires of noise_chip, a memsim.CrossbarConfig as a dict (memsim.WireWeightModel).
    noise: str = "none"
    noise_std: float = 0.05
    noise_table: dict | None = None
    noise_chip: dict | None = None

    def __post_init__(self):
        for name in ("weight_bits", "input_bits", "output_bits", "depthwise_io_bits"):
            value = getattr(self, name)
            if value is not None or name == "input_bits":
                try:
                    max_level(value)
                except ValueError as error:
                    raise ValueError(f"{name}: {error}") from None
        if self.depthwise_io_bits is not None and not self.quantize_depthwise:
            raise ValueError(
                "depthwise_io_bits quantizes the depthwise convolution's input and output: set quantize_depthwise"
            )
        if self.weight_scale not in WEIGHT_SCALES:
            raise ValueError(f"weight_scale must be one of {list(WEIGHT_SCALES)}, got {self.weight_scale!r}")
        if self.input_momentum is not None and not 0 < self.input_momentum <= 1:
            raise ValueError(f"input_momentum must be in (0, 1] or None, got {self.input_momentum!r}")
        if self.noise not in NOISES:
            raise ValueError(f"noise must be one of {list(NOISES)}, got {self.noise!r}")
        if not self.noise_std >= 0:
            raise ValueError(f"noise_std must be >= 0, got {self.noise_std!r}")
        if self.noise == "chip" and self.noise_table is None:
            raise ValueError("noise=chip needs noise_table (a memsim.WeightErrorModel as a dict)")
        for pattern, bits in self.layer_bits.items():
            try:
                max_level(bits)
            except ValueError as error:
                raise ValueError(f"layer_bits[{pattern!r}]: {error}") from None
        if self.layer_bits and self.noise in ("chip", "wires"):
            raise ValueError(
                f"layer_bits: noise={self.noise} models one chip of weight_bits for every layer; mixed precision "
                "trains with noise=gauss or none"
            )
        if self.noise == "wires":
            chip = None if self.noise_chip is None else CrossbarConfig(**self.noise_chip)
            if chip is None or not chip.wired or chip.weight_bits != self.weight_bits:
                raise ValueError(
                    "noise=wires needs noise_chip, a memsim.CrossbarConfig as a dict with resistive wires and "
                    f"weight_bits={self.weight_bits}, got {self.noise_chip}"
                )

    def for_layer(self, name: str) -> "QuantConfig":
        """The configuration of the crossbar layer `name`: its layer_bits pattern's weight bits, or weight_bits."""
        bits = next((b for pattern, b in self.layer_bits.items() if fnmatchcase(name, pattern)), None)
        return self if bits is None else dataclasses.replace(self, weight_bits=bits, layer_bits={})

    def weight_noise(self, shape: tuple[int, int]) -> Callable[[torch.Tensor, int], torch.Tensor] | None:
        """What noise-aware training does to the integer weights q [out, in] (`shape`) of a crossbar layer at the
        training step whose weights have a given version (None: nothing); the layer's own: a WireWeightModel keeps
        its layer's state and programs anew by steps, the other models draw afresh at every call."""
        if self.noise == "gauss" and self.weight_bits is not None:
            deviation = self.noise_std * max_level(self.weight_bits)
            return lambda q, _version: q + deviation * torch.randn_like(q)
        if self.noise == "chip" and self.noise_table is not None:
            table = WeightErrorModel(**self.noise_table)
            return lambda q, _version: table.sample(q)
        if self.noise == "wires" and self.noise_chip is not None:
            return WireWeightModel(CrossbarConfig(**self.noise_chip), shape)
        return None


class WeightQuantizer(nn.Module):
    """Symmetric weight fake quantization; the scale comes from the weights (MinMax: the current ones, or the
    running maximum over training steps) or is learned (LSQ)."""

    max_abs: torch.Tensor

    def __init__(self, weight: torch.Tensor, bits: float, mode: str = "minmax", per_channel: bool = False):
        super().__init__()
        self.qmax = max_level(bits)
        self.per_channel = per_channel
        self.running = mode == "running_max"
        self.step: nn.Parameter | None
        if mode == "lsq":  # LSQ's initial step: 2 mean|w| / sqrt(qmax)
            mean_abs = self._reduce(weight.detach().abs(), "mean")
            self.step = nn.Parameter(2 * mean_abs / self.qmax**0.5)
        else:
            self.step = None
        if self.running:  # 0 until the first training step: the current weights' maximum serves until then
            self.register_buffer("max_abs", torch.zeros_like(self._reduce(weight.detach().abs(), "max")))
        self.noise: Callable[[torch.Tensor, int], torch.Tensor] | None = None  # noise-aware training (QuantConfig)

    def _reduce(self, values: torch.Tensor, how: str) -> torch.Tensor:
        if not self.per_channel:
            return values.amax() if how == "max" else values.mean()
        return values.amax(dim=1, keepdim=True) if how == "max" else values.mean(dim=1, keepdim=True)

    def scale(self, weight: torch.Tensor) -> torch.Tensor:
        tiny = torch.finfo(weight.dtype).tiny
        if self.step is not None:
            return self.step.abs().clamp_min(tiny)
        current = self._reduce(weight.detach().abs(), "max")
        if self.running:
            current = torch.where(self.max_abs > 0, self.max_abs, current)
        return (current / self.qmax).clamp_min(tiny)

    def at_bits(self, bits: float) -> "WeightQuantizer":
        """A copy that quantizes the same range (the observed maximum, or LSQ's step times its top level) to the
        levels of `bits`: what the layer's weights become at other bits without training."""
        other = copy.deepcopy(self)
        other.qmax = max_level(bits)
        if other.step is not None:
            with torch.no_grad():
                other.step.mul_(self.qmax / other.qmax)
        return other

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if self.running and self.training:
            with torch.no_grad():
                self.max_abs.copy_(torch.maximum(self.max_abs, self._reduce(weight.detach().abs(), "max")))
        scale = self.scale(weight)
        if self.step is not None:  # LSQ's gradient scale 1 / sqrt(weights per step * qmax)
            scale = _scale_grad(scale, (weight.numel() / scale.numel() * self.qmax) ** -0.5)
        quantized = fake_quantize(weight, scale, self.qmax)
        if self.noise is None or not self.training:
            return quantized
        # The weights the chip would hold this step; the gradient passes straight through to the quantized ones.
        q = (quantized / scale).detach().round()
        return quantized + ((self.noise(q, weight._version) - q) * scale).detach()


class InputQuantizer(nn.Module):
    """Per-tensor symmetric fake quantization of an activation (a layer's input or output, an attention
    operand) with an observed range; `bits` as max_level's (1.5: ternary).

    Training updates the range from each batch (running max, or an EMA with `momentum`) before quantizing;
    evaluation uses the stored range. All on-device, no host synchronization.
    """

    max_abs: torch.Tensor

    def __init__(self, bits: float = 8, momentum: float | None = None):
        super().__init__()
        self.bits = bits
        self.qmax = max_level(bits)
        self.momentum = momentum
        self.register_buffer("max_abs", torch.zeros(()))

    @property
    def scale(self) -> torch.Tensor:
        return self.max_abs.clamp_min(torch.finfo(self.max_abs.dtype).tiny) / self.qmax

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            with torch.no_grad():
                current = x.detach().abs().amax().float()
                seen = self.max_abs > 0
                if self.momentum is None:
                    updated = torch.maximum(self.max_abs, current)
                else:
                    updated = torch.where(seen, torch.lerp(self.max_abs, current, self.momentum), current)
                self.max_abs.copy_(updated)
        return fake_quantize(x.float(), self.scale, self.qmax).to(x.dtype)


class QuantLinear(nn.Linear):
    """nn.Linear with fake-quantized weights and inputs (and outputs); a crossbar converter maps it exactly.

    Contract (what `memsim.MemristorLinear.from_linear` reads):
    - `integer_weight()`: [out_features, in_features] tensor of integers in +-`weight_qmax` (float dtype),
      the values the crossbar stores; `weight_bits` (1.5 = ternary, else an integer).
    - `weight_scale`: the weight step, a 0-dim tensor (per-tensor; with per_channel=True, [out_features, 1]).
    - `input_scale`: the input quantizer's step, a 0-dim tensor; `input_bits`. Inputs are quantized to
      clamp(round(x / input_scale), +-(2^(input_bits-1)-1)), so the DAC's full scale is
      input_scale * (2^(input_bits-1)-1).
    - `bias`: float, added digitally.
    - `output_quant`: None, or an InputQuantizer (output_bits) applied after the bias; a converter keeps this
      module and applies it to its own output, so the output quantization stays on on the chip.
    In eval mode forward(x) equals
    F.linear(input_scale * clamp(round(x / input_scale)), integer_weight() * weight_scale, bias), passed
    through output_quant when it is set.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        config: QuantConfig,
        weight: torch.Tensor | None = None,
    ):
        super().__init__(in_features, out_features, bias, device=None if weight is None else weight.device)
        if weight is not None:
            self.weight.data.copy_(weight)
        if config.weight_bits is None:
            raise ValueError("QuantLinear needs weight_bits (None is the float model)")
        self.weight_bits = config.weight_bits
        self.weight_quant = WeightQuantizer(self.weight, config.weight_bits, config.weight_scale, config.per_channel)
        self.input_quant = InputQuantizer(config.input_bits, config.input_momentum)
        self.output_quant: InputQuantizer | None = None
        if config.output_bits is not None:
            self.output_quant = InputQuantizer(config.output_bits, config.input_momentum)

    @classmethod
    def from_linear(cls, linear: nn.Linear, config: QuantConfig) -> "QuantLinear":
        """A quantization-aware copy of a (trained or fresh) linear layer; LSQ steps start from its weights."""
        layer = cls(
            linear.in_features,
            linear.out_features,
            linear.bias is not None,
            config=config,
            weight=linear.weight.detach(),
        )
        if linear.bias is not None:
            layer.bias.data.copy_(linear.bias.detach())
        return layer

    @property
    def weight_qmax(self) -> int:
        return self.weight_quant.qmax

    @property
    def weight_scale(self) -> torch.Tensor:
        return self.weight_quant.scale(self.weight).detach()

    @property
    def input_scale(self) -> torch.Tensor:
        return self.input_quant.scale

    @property
    def input_bits(self) -> float:
        return self.input_quant.bits

    @torch.no_grad()
    def integer_weight(self) -> torch.Tensor:
        return (self.weight / self.weight_scale).clamp(-self.weight_qmax, self.weight_qmax).round()

    def at_bits(self, bits: float) -> "QuantLinear":
        """A copy of this trained layer with its weights quantized at `bits` over the same range (no training, no
        weight noise): what a layer would hold at other bits, as asr.sensitivity measures it."""
        other = copy.deepcopy(self)
        other.weight_bits = bits
        other.weight_quant = self.weight_quant.at_bits(bits)
        other.weight_quant.noise = None
        return other

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(self.input_quant(x), self.weight_quant(self.weight), self.bias)
        return y if self.output_quant is None else self.output_quant(y)

    def extra_repr(self) -> str:
        output = "" if self.output_quant is None else f", output_bits={self.output_quant.bits}"
        return f"{super().extra_repr()}, weight_bits={self.weight_bits}, input_bits={self.input_bits}{output}"


class _QuantConv:
    """What QuantConv1d and QuantConv2d share: fake-quantized weights (per tensor, as the released code's
    Conv1dQuant), their integers for a crossbar, and construction from a trained convolution. Inputs and outputs
    stay float unless io_bits is given: then each has an InputQuantizer of its own (input_quant before the
    convolution, output_quant after its bias), and a crossbar maps it as a QuantLinear (its DAC's full scale the
    input quantizer's, its output quantizer kept); without, the DAC's range comes from calibration
    (memsim.calibrate)."""

    def __init__(
        self, *args, config: QuantConfig, weight: torch.Tensor | None = None, io_bits: int | None = None, **kwargs
    ):
        super().__init__(*args, **kwargs)  # the convolution (the other base)
        this: Any = self
        if weight is not None:
            this.weight.data.copy_(weight)
        if config.weight_bits is None:
            raise ValueError(f"{type(self).__name__} needs weight_bits (None is the float model)")
        this.weight_quant = WeightQuantizer(this.weight, config.weight_bits, config.weight_scale)
        this.input_quant = None if io_bits is None else InputQuantizer(io_bits, config.input_momentum)
        this.output_quant = None if io_bits is None else InputQuantizer(io_bits, config.input_momentum)

    # input_scale and input_bits, as QuantLinear has them, exist only where the inputs are quantized (a crossbar
    # converter asks hasattr(source, "input_scale")): elsewhere the properties raise AttributeError.
    @property
    def input_scale(self) -> torch.Tensor:
        return self._input_quantizer().scale

    @property
    def input_bits(self) -> float:
        return self._input_quantizer().bits

    def _input_quantizer(self) -> InputQuantizer:
        this: Any = self
        quantizer = this.input_quant
        if quantizer is None:
            raise AttributeError(f"{type(self).__name__}'s inputs are not quantized (io_bits)")
        return quantizer

    @classmethod
    def from_conv(cls, conv, config: QuantConfig, io_bits: int | None = None):
        """A quantization-aware copy of a (trained or fresh) convolution, with io_bits input and output
        quantizers if given; LSQ steps start from its weights."""
        layer: Any = cls(  # type: ignore[call-arg]
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            conv.dilation,
            conv.groups,
            conv.bias is not None,
            conv.padding_mode,
            device=conv.weight.device,
            config=config,
            weight=conv.weight.detach(),
            io_bits=io_bits,
        )
        if conv.bias is not None:
            layer.bias.data.copy_(conv.bias.detach())
        return layer

    @property
    def weight_scale(self) -> torch.Tensor:
        this: Any = self
        return this.weight_quant.scale(this.weight).detach()

    @torch.no_grad()
    def integer_weight(self) -> torch.Tensor:
        """The integers the weights are fake-quantized to (what memsim's crossbar convolutions store)."""
        this: Any = self
        qmax = this.weight_quant.qmax
        return (this.weight / self.weight_scale).clamp(-qmax, qmax).round()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        this: Any = self
        if this.input_quant is not None:
            x = this.input_quant(x)
        y = this._conv_forward(x, this.weight_quant(this.weight), this.bias)
        return y if this.output_quant is None else this.output_quant(y)


class QuantConv1d(_QuantConv, nn.Conv1d):
    """nn.Conv1d with fake-quantized weights: the conv module's depthwise convolution under
    `quantize_depthwise`."""

    weight_quant: WeightQuantizer


class QuantConv2d(_QuantConv, nn.Conv2d):
    """nn.Conv2d with fake-quantized weights: the frontend's convolutions under `quantize_frontend`."""

    weight_quant: WeightQuantizer


def quantize(model: nn.Module, config: QuantConfig) -> nn.Module:
    """Swap, in place, the nn.Linear layers named by config.include (and not config.exclude) for QuantLinear
    (with config.noise, their weights noisy in training); an nn.LSTM becomes a memsim.LinearLSTM whose gate
    layers ([W_ih | W_hh] per layer and direction) are crossbar layers too, unless excluded;
    with quantize_attention, give every SelfAttention quantizers for its queries, keys, values and weights;
    with quantize_depthwise, make every ConvModule's depthwise convolution a QuantConv1d; with quantize_frontend,
    every Conv2d of the frontend a QuantConv2d.

    Returns the model unchanged when config.weight_bits is None. Call it after loading float weights to
    start QAT from a float checkpoint, or on a fresh model for QAT from scratch (the paper).
    """
    if config.weight_bits is None:
        return model
    gates = []
    for name, module in list(model.named_modules()):  # an LSTM's gates as linear layers, the same function
        if isinstance(module, nn.LSTM):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, LinearLSTM.from_lstm(module))
            gates += [
                f"{name}.cells.{k}.{d}" for k in range(module.num_layers) for d in range(1 + module.bidirectional)
            ]
    chosen = [
        name
        for name, module in model.named_modules()
        if type(module) is nn.Linear
        and (name in gates or any(fnmatchcase(name, p) for p in config.include))
        and not any(fnmatchcase(name, p) for p in config.exclude)
    ]
    if not chosen:
        raise ValueError(f"no nn.Linear layer matches include={list(config.include)} exclude={list(config.exclude)}")
    unused = [p for p in config.layer_bits if not any(fnmatchcase(name, p) for name in chosen)]
    if unused:
        raise ValueError(f"layer_bits pattern(s) {unused} match no crossbar layer; the crossbar layers: {chosen}")
    for name in chosen:
        parent, _, child = name.rpartition(".")
        owner = model.get_submodule(parent)
        layer_config = config.for_layer(name)
        layer = QuantLinear.from_linear(getattr(owner, child), layer_config)
        layer.weight_quant.noise = layer_config.weight_noise((layer.out_features, layer.in_features))
        setattr(owner, child, layer)
    if config.quantize_attention:
        for attention in _all(model, SelfAttention, "quantize_attention"):
            attention.q_quant, attention.k_quant, attention.v_quant, attention.weights_quant = (
                InputQuantizer(config.weight_bits, config.input_momentum) for _ in range(4)
            )
    if config.quantize_depthwise:
        for conv in _all(model, ConvModule, "quantize_depthwise"):
            conv.depthwise = QuantConv1d.from_conv(conv.depthwise, config, config.depthwise_io_bits)
    if config.quantize_frontend:
        frontend = model.get_submodule("frontend")
        convs = [name for name, m in frontend.named_modules() if type(m) is nn.Conv2d]
        if not convs:
            raise ValueError("quantize_frontend: the model's frontend has no Conv2d")
        for name in convs:
            parent, _, child = name.rpartition(".")
            owner = frontend.get_submodule(parent)
            setattr(owner, child, QuantConv2d.from_conv(getattr(owner, child), config))
    return model


def _all(model: nn.Module, kind: type[M], option: str) -> list[M]:
    """Every module of `kind` in the model; an option that would change nothing is an error."""
    found = [m for m in model.modules() if isinstance(m, kind)]
    if not found:
        raise ValueError(f"{option}: the model has no {kind.__name__}")
    return found


def quantized_layers(model: nn.Module, kinds: tuple[str, ...] = ("linear",)) -> list[str]:
    """The names of the quantization-aware layers of the given kinds (memsim.KINDS): "linear" (QuantLinear),
    "conv" (QuantConv1d, QuantConv2d)."""
    classes = tuple(cls for kind, cls in (("linear", QuantLinear), ("conv", _QuantConv)) if kind in kinds)
    return [name for name, module in model.named_modules() if classes and isinstance(module, classes)]
