"""Which torch device a process uses: the worker's for training, serving's for answers."""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


def training_device(setting: str) -> torch.device:
    """The worker's device for `STILLHOUSE_DEVICE` (auto: cuda when there is one)."""
    if setting == "cuda" or (setting == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("STILLHOUSE_DEVICE=cuda but no CUDA device is available")
        return torch.device("cuda")
    return torch.device("cpu")


def serving_device(setting: str) -> torch.device:
    """The device that serves predictions (`STILLHOUSE_SERVING_DEVICE`); the worker times
    a report's latencies on it too. cuda without a visible GPU falls back to cpu."""
    if setting == "cuda":
        if torch.cuda.is_available():
            return torch.device("cuda")
        log.warning("STILLHOUSE_SERVING_DEVICE=cuda but no CUDA device is visible; using cpu")
    return torch.device("cpu")
