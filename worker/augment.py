"""Augmentation on tensors, a whole batch at once (no per-sample PIL work)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def crop_pad(image_size: int) -> int:
    """Padding (pixels) for random crops: an eighth of the side, as in the CIFAR recipe."""
    return max(1, image_size // 8)


def crop_batch(x: torch.Tensor, offsets: torch.Tensor, pad: int) -> torch.Tensor:
    """Crop each padded sample at its own (dy, dx) offset, all at once by gathering."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    rows = torch.arange(h, device=x.device)[None, :] + offsets[:, 0, None]
    cols = torch.arange(w, device=x.device)[None, :] + offsets[:, 1, None]
    batch = torch.arange(n, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2)


def random_augment(x: torch.Tensor, kind: str, gen: torch.Generator) -> torch.Tensor:
    """Random horizontal flips and/or padded crops, drawn from `gen` (reproducible)."""
    n = x.shape[0]
    if kind in ("flip", "flip_crop"):
        flip = (torch.rand(n, generator=gen) < 0.5).to(x.device)
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    if kind in ("crop", "flip_crop"):
        pad = crop_pad(x.shape[-1])
        offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=gen).to(x.device)
        x = crop_batch(x, offsets, pad)
    return x
