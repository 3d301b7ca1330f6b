"""diffusers-repa: REPA (representation alignment) for SiT, in Hugging Face diffusers' form."""

__version__ = "0.1.0"

from .alignment import AlignmentEncoder, REPALoss, REPALossOutput, check_compatibility, match_tokens
from .models import SIT_PRESETS, REPAProjector, SiTTransformer2DModel, SiTTransformer2DModelOutput
from .pipeline_repa import REPAPipeline
from .schedulers import SiTEulerMaruyamaScheduler, SiTEulerScheduler, SiTHeunScheduler

__all__ = [
    "AlignmentEncoder",
    "REPALoss",
    "REPALossOutput",
    "REPAPipeline",
    "REPAProjector",
    "SIT_PRESETS",
    "SiTEulerMaruyamaScheduler",
    "SiTEulerScheduler",
    "SiTHeunScheduler",
    "SiTTransformer2DModel",
    "SiTTransformer2DModelOutput",
    "check_compatibility",
    "match_tokens",
]
