# Copyright 2026 The diffusers-repa authors. Licensed under the Apache License, Version 2.0.
"""The interpolation paths of REPA's flow matching (official `loss.py` `SILoss.interpolant`).

Time follows REPA: `t` in [0, 1], `t = 0` is data and `t = 1` is pure noise, and

    x_t = alpha_t * x_0 + sigma_t * noise,        velocity v_t = d_alpha_t * x_0 + d_sigma_t * noise.

This module is the one place where the path coefficients are written down; the training loss and the samplers both
import it.
"""

import math

import torch

PATH_TYPES = ("linear", "cosine")


def check_path_type(path_type: str) -> None:
    """Raise a `ValueError` naming the valid choices when `path_type` is not a known path."""
    if path_type not in PATH_TYPES:
        raise ValueError(f"Unknown `path_type` {path_type!r}: choose one of {', '.join(map(repr, PATH_TYPES))}.")


def path_coefficients(path_type: str, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""
    The coefficients of the path at time `t` and their time derivatives.

    * `"linear"`: alpha_t = 1 - t, sigma_t = t, d_alpha_t = -1, d_sigma_t = 1 (so v = noise - x_0).
    * `"cosine"`: alpha_t = cos(pi t / 2), sigma_t = sin(pi t / 2), d_alpha_t = -(pi/2) sin(pi t / 2),
      d_sigma_t = (pi/2) cos(pi t / 2).

    The operations are written in the official order, so float32 results are bit-identical to REPA's.

    Args:
        path_type (`str`): `"linear"` or `"cosine"`.
        t (`torch.Tensor` of any shape): Flow time in [0, 1] (1 = pure noise).

    Returns:
        `(alpha_t, sigma_t, d_alpha_t, d_sigma_t)`, four tensors with the shape, dtype and device of `t`.

    Example:

    ```py
    >>> import torch
    >>> from diffusers_repa.flow_paths import path_coefficients

    >>> alpha, sigma, d_alpha, d_sigma = path_coefficients("linear", torch.tensor([0.25]))
    >>> alpha, sigma, d_alpha, d_sigma
    (tensor([0.7500]), tensor([0.2500]), tensor([-1.]), tensor([1.]))
    ```
    """
    check_path_type(path_type)
    if path_type == "linear":
        return 1 - t, t, torch.full_like(t, -1.0), torch.ones_like(t)
    angle = t * math.pi / 2
    return torch.cos(angle), torch.sin(angle), -math.pi / 2 * torch.sin(angle), math.pi / 2 * torch.cos(angle)


def time_from_noise_ratio(path_type: str, ratio: torch.Tensor) -> torch.Tensor:
    r"""
    The time `t` at which the path's noise-to-signal ratio `sigma_t / alpha_t` equals `ratio`.

    * `"linear"`: t = ratio / (1 + ratio).
    * `"cosine"`: t = (2 / pi) atan(ratio).

    REPA's `"lognormal"` time weighting draws `ratio = exp(n)`, `n ~ N(0, 1)`, and maps it through this function.

    Args:
        path_type (`str`): `"linear"` or `"cosine"`.
        ratio (`torch.Tensor` of any shape): Non-negative noise-to-signal ratios.

    Returns:
        `torch.Tensor` of the same shape: times in [0, 1].

    Example:

    ```py
    >>> import torch
    >>> from diffusers_repa.flow_paths import time_from_noise_ratio

    >>> time_from_noise_ratio("cosine", torch.tensor([1.0]))
    tensor([0.5000])
    ```
    """
    check_path_type(path_type)
    if path_type == "linear":
        return ratio / (1 + ratio)
    return 2 / math.pi * torch.atan(ratio)
