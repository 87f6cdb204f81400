"""Bilinear resizing as matrix products (prnad.model.resize) against hand-computed weights and F.interpolate."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from prnad.model.resize import bilinear_matrix, resized, resized_sum


def test_the_interpolation_matrix_of_a_doubling_is_the_hand_computed_one():
    # output j samples (j + 0.5) / 2 - 0.5 = -0.25 (clamped to 0), 0.25, 0.75, 1.25 (its right neighbour clamped)
    expected = torch.tensor([[1.0, 0.0], [0.75, 0.25], [0.25, 0.75], [0.0, 1.0]], dtype=torch.float64)
    assert torch.equal(bilinear_matrix(2, 4, dtype=torch.float64, device=torch.device("cpu")), expected)


@pytest.mark.parametrize(
    ("h", "w", "size"), [(32, 32, (256, 256)), (16, 16, (256, 256)), (5, 7, (13, 11)), (10, 6, (4, 3))]
)
def test_resized_is_f_interpolate(h: int, w: int, size: tuple[int, int]):
    x = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(0))
    expected = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    torch.testing.assert_close(resized(x, size), expected, rtol=1e-6, atol=2e-6)


def test_resized_sum_is_the_sum_of_the_resized_maps():
    g = torch.Generator().manual_seed(1)
    maps = [
        torch.randn(2, 1, 64, 64, generator=g),
        torch.randn(2, 1, 32, 32, generator=g),
        torch.randn(2, 1, 16, 16, generator=g),
    ]
    expected = sum(F.interpolate(m, size=(256, 256), mode="bilinear", align_corners=False) for m in maps)
    got = resized_sum(maps, (256, 256))
    assert got.shape == (2, 1, 256, 256) and got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=5e-6)
