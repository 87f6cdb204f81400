"""PRN's loss [P eq. 5]: L = SmoothL1(Mo, M) + lambda * Focal(Mo, M)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from prnad.config import LossConfig


def focal_loss(logits: torch.Tensor, target: torch.Tensor, *, alpha: float, gamma: float) -> torch.Tensor:
    """Binary focal loss, mean over pixels; computed from logits for numerical stability."""
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p = torch.sigmoid(logits)
    p_t = p * target + (1 - p) * (1 - target)
    alpha_t = alpha * target + (1 - alpha) * (1 - target)
    return (alpha_t * (1 - p_t) ** gamma * ce).mean()


def prn_loss(logits: torch.Tensor, masks: torch.Tensor, config: LossConfig) -> torch.Tensor:
    """logits (B, 1, S, S), masks (B, 1, S, S) in {0, 1} -> scalar loss."""
    if logits.shape != masks.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and masks {tuple(masks.shape)} differ in shape")
    masks = masks.to(logits.dtype)
    smooth = F.smooth_l1_loss(torch.sigmoid(logits), masks, beta=config.smooth_l1_beta)
    focal = focal_loss(logits, masks, alpha=config.focal_alpha, gamma=config.focal_gamma)
    return smooth + config.focal_weight * focal
