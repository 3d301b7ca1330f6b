from .projector import REPAProjector
from .sit_transformer_2d import SIT_PRESETS, SiTTransformer2DModel, SiTTransformer2DModelOutput

__all__ = ["REPAProjector", "SIT_PRESETS", "SiTTransformer2DModel", "SiTTransformer2DModelOutput"]
