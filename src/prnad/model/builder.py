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
    """Build PRN around ``prototypes`` (one tensor (K_i, C_i, H_i, W_i) per head scale) and optional ``score_banks``
    (2 tensors (M, C_i): a finished run with ``model.score_bank_size`` > 0); the encoder is built unless given."""
    encoder = encoder if encoder is not None else build_encoder(config.encoder)
    scales = config.head_scales
    c = tuple(encoder.channels[i] for i in scales)
    joint = tuple(2 * ci for ci in c)
    attention = torch.nn.ModuleList(
        MSAStack(
            channels=d,
            blocks=config.msa_blocks if i in config.msa_scales else 0,
            grids=config.msa_grids,
            head_dim=config.msa_head_dim,
            max_kv=config.msa_max_kv,
        )
        for i, d in zip(scales, joint, strict=True)
    )
    return PRN(
        encoder=encoder,
        prototypes=prototypes,
        feature_fusion=MultiScaleFusion(channels=c, exchange=config.multi_scale_fusion),
        residual_fusion=MultiScaleFusion(channels=c, exchange=config.multi_scale_fusion),
        attention=attention,
        output_fusion=MultiScaleFusion(channels=joint, exchange=config.multi_scale_fusion),
        decoder=Decoder(
            bottom_channels=encoder.channels[3] if config.decoder_bottom else None,
            skip_channels=joint,
            channels=config.decoder_channels[: len(scales)],
        ),
        residual_kind=config.residual,
        topk=config.topk,
        prototype_match=config.prototype_match,
        head_scales=scales,
        score_smoothing=config.score_smoothing,
        score_banks=score_banks,
        bank_map_weights=config.bank_map_weights,
        bank_query_stride=config.bank_query_stride,
    )
