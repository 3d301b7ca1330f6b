# Copyright 2026 The diffusers-repa authors. Licensed under the Apache License, Version 2.0.
"""REPA's representation alignment: the training loss and the frozen target encoders."""

from .encoders import AlignmentEncoder, check_compatibility, match_tokens
from .loss import REPALoss, REPALossOutput, projection_loss

__all__ = [
    "AlignmentEncoder",
    "REPALoss",
    "REPALossOutput",
    "check_compatibility",
    "match_tokens",
    "projection_loss",
]
