"""diffusers-repa: REPA (representation alignment) for SiT, in Hugging Face diffusers' form."""

__version__ = "0.1.0"

from .models import SIT_PRESETS, REPAProjector, SiTTransformer2DModel, SiTTransformer2DModelOutput

__all__ = [
    "REPAProjector",
    "SIT_PRESETS",
    "SiTTransformer2DModel",
    "SiTTransformer2DModelOutput",
]
