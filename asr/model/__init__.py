"""The Conformer-CTC acoustic model."""

from asr.model.ctc import ConformerCTC, ModelConfig, count_parameters, ctc_loss, infeasible
from asr.model.frontend import Conv2dSubsampling, VGGSubsampling

__all__ = [
    "ConformerCTC",
    "Conv2dSubsampling",
    "ModelConfig",
    "VGGSubsampling",
    "count_parameters",
    "ctc_loss",
    "infeasible",
]
