"""The one place that assembles PRN from its parts."""

from __future__ import annotations

import torch

from prnad.config import ModelConfig
from prnad.model.attention import MSAStack
from prnad.model.decoder import Decoder
from prnad.model.encoder import Encoder, build_encoder
from prnad.model.fusion import MultiScaleFusion
from prnad.model.prn import PRN


def build_prn(
    config: ModelConfig,
    *,
    prototypes: list[torch.Tensor],
    encoder: Encoder | None = None,
    score_banks: list[torch.Tensor] | None = None,
) -> PRN:
    """Build PRN around ``prototypes`` (3 tensors (K_i, C_i, H_i, W_i)) and optional ``score_banks``
    (2 tensors (M, C_i): a finished run with ``model.score_bank_size`` > 0); the encoder is built unless given."""
    encoder = encoder if encoder is not None else build_encoder(config.encoder)
    c = encoder.channels[:3]
    joint = tuple(2 * ci for ci in c)
    attention = torch.nn.ModuleList(
        MSAStack(
            channels=d,
            blocks=config.msa_blocks if i in config.msa_scales else 0,
            grids=config.msa_grids,
            head_dim=config.msa_head_dim,
            max_kv=config.msa_max_kv,
        )
        for i, d in enumerate(joint)
    )
    return PRN(
        encoder=encoder,
        prototypes=prototypes,
        feature_fusion=MultiScaleFusion(channels=c),
        residual_fusion=MultiScaleFusion(channels=c),
        attention=attention,
        output_fusion=MultiScaleFusion(channels=joint),
        decoder=Decoder(bottom_channels=encoder.channels[3], skip_channels=joint, channels=config.decoder_channels),
        residual_kind=config.residual,
        topk=config.topk,
        prototype_match=config.prototype_match,
        score_smoothing=config.score_smoothing,
        score_banks=score_banks,
    )


def prototype_shapes(encoder: Encoder, image_size: int, counts: tuple[int, int, int]) -> list[tuple[int, ...]]:
    """Shapes (K_i, C_i, S/r_i, S/r_i) of the prototype buffers for ``counts`` prototypes per scale."""
    return [
        (k, ch, image_size // r, image_size // r)
        for k, ch, r in zip(counts, encoder.channels, encoder.reductions, strict=False)
    ]
