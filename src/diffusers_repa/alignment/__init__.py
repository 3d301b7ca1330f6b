# Copyright 2026 The diffusers-repa authors. Licensed under the Apache License, Version 2.0.
"""REPA's representation alignment: the training loss, the frozen target encoders and the alignment metrics."""

from .encoders import AlignmentEncoder, check_compatibility, match_tokens
from .loss import REPALoss, REPALossOutput, projection_loss
from .metrics import (
    LinearProbe,
    alignment_cknna,
    cknna,
    encoder_features,
    linear_probe_accuracy,
    pool_tokens,
    sit_hidden_states,
)

__all__ = [
    "AlignmentEncoder",
    "LinearProbe",
    "REPALoss",
    "REPALossOutput",
    "alignment_cknna",
    "check_compatibility",
    "cknna",
    "encoder_features",
    "linear_probe_accuracy",
    "match_tokens",
    "pool_tokens",
    "projection_loss",
    "sit_hidden_states",
]
