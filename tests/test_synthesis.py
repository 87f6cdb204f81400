"""Anomaly synthesis: contracts of the three generators and of their parts, on tiny 64x64 images."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from prnad.config import SynthConfig
from prnad.errors import DataError
from prnad.synthesis import (
    COLOR_OPS,
    detect_category_type,
    estimate_foreground,
    extended_anomaly,
    foreground_masks,
    heterologous_anomaly,
    homologous_anomaly,
    load_textures,
    otsu_threshold,
    perlin_mask,
    perlin_noise,
    procedural_textures,
    random_color_ops,
    shuffle_patches,
    synth_grid,
    target_area,
)

SIZE = 64
KINDS = ("ea", "hea", "hoa")


def disc_mask(size: int = SIZE, centre: tuple[int, int] = (32, 32), radius: int = 18) -> np.ndarray:
    rows, cols = np.ogrid[:size, :size]
    return (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius**2


def disc_image(seed: int, centre: tuple[int, int] = (32, 32), radius: int = 18) -> np.ndarray:
    """A dark, slightly noisy disc on a white background: a synthetic object image."""
    rng = np.random.default_rng(seed)
    image = np.full((SIZE, SIZE, 3), 245.0) + rng.normal(0.0, 3.0, (SIZE, SIZE, 3))
    image[disc_mask(centre=centre, radius=radius)] = np.array([40.0, 45.0, 60.0]) + rng.normal(0.0, 8.0, 3)
    return np.clip(image, 0, 255).astype(np.uint8)


def noise_image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)


def generate(kind: str, seed: int, *, allowed: np.ndarray | None = None, config: SynthConfig | None = None):
    """One anomaly of ``kind`` on a disc image, with a noisy seen anomaly / texture / other normal image."""
    config = config or SynthConfig()
    rng = np.random.default_rng(seed)
    normal = disc_image(0)
    if kind == "ea":
        seen_mask = disc_mask(centre=(30, 36), radius=10)
        return extended_anomaly(normal, noise_image(1), seen_mask, rng, allowed=allowed, config=config)
    if kind == "hea":
        return heterologous_anomaly(normal, noise_image(2), rng, allowed=allowed, config=config)
    return homologous_anomaly(normal, disc_image(3, centre=(28, 34)), rng, allowed=allowed, config=config)


@pytest.mark.parametrize("kind", KINDS)
def test_generators_are_reproducible_and_vary_with_the_seed(kind):
    image_a, mask_a = generate(kind, seed=7)
    image_b, mask_b = generate(kind, seed=7)
    np.testing.assert_array_equal(image_a, image_b)
    np.testing.assert_array_equal(mask_a, mask_b)
    image_c, mask_c = generate(kind, seed=8)
    assert not (np.array_equal(image_a, image_c) and np.array_equal(mask_a, mask_c))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("restricted", [False, True])
def test_generators_keep_the_normal_image_outside_a_nonempty_mask(kind, restricted):
    allowed = disc_mask() if restricted else None
    normal = disc_image(0)
    for seed in range(5):
        image, mask = generate(kind, seed, allowed=allowed)
        assert image.dtype == np.uint8 and image.shape == (SIZE, SIZE, 3)
        assert mask.dtype == bool and mask.shape == (SIZE, SIZE) and mask.any()
        np.testing.assert_array_equal(image[~mask], normal[~mask])
        if restricted:
            assert not (mask & ~allowed).any()


def test_generators_fall_back_to_the_target_area_when_every_try_misses():
    """A seen anomaly with an empty mask can never hit a target area: the mask is then the area itself."""
    config = SynthConfig(max_tries=2)
    rng = np.random.default_rng(0)
    empty = np.zeros((SIZE, SIZE), dtype=bool)
    _, mask = extended_anomaly(disc_image(0), noise_image(1), empty, rng, allowed=disc_mask(), config=config)
    assert mask.any() and not (mask & ~disc_mask()).any()


@pytest.mark.parametrize("kind", ["ea", "hea"])
def test_opacity_zero_pastes_the_source_and_one_keeps_the_normal(kind):
    """Constant source images stay constant through colour ops and spatial ops away from the border."""
    normal = np.full((SIZE, SIZE, 3), 10, dtype=np.uint8)
    source = np.full((SIZE, SIZE, 3), 200, dtype=np.uint8)
    opacity = {"ea": "ea_opacity", "hea": "sa_opacity"}[kind]

    def run(beta: float, seed: int):
        config = SynthConfig(**{opacity: (beta, beta)})
        rng = np.random.default_rng(seed)
        if kind == "ea":
            seen_mask = disc_mask(radius=12)
            return extended_anomaly(normal, source, seen_mask, rng, allowed=None, config=config)
        return heterologous_anomaly(normal, source, rng, allowed=None, config=config)

    for seed in range(4):
        image, mask = run(0.0, seed)
        inside = image[mask]  # (K, 3)
        assert (inside == inside[0]).all(), "beta = 0: the mask holds the (uniformly recoloured) source only"
        assert (inside[0] != 10).any()
        image, mask = run(1.0, seed)
        assert mask.any()
        np.testing.assert_array_equal(image, normal)


def test_extended_anomaly_moves_the_seen_defect():
    """beta = 0 on a noise seen image: (nearly) every mask pixel shows the seen image, not the normal one."""
    config = SynthConfig(ea_opacity=(0.0, 0.0))
    normal = disc_image(0)
    image, mask = extended_anomaly(
        normal, noise_image(1), disc_mask(radius=14), np.random.default_rng(3), allowed=None, config=config
    )
    changed = (image != normal).any(axis=-1)
    assert changed[mask].mean() > 0.9


def test_perlin_noise_range_and_any_shape():
    rng = np.random.default_rng(0)
    noise = perlin_noise((SIZE, SIZE), (4, 8), rng)
    assert noise.dtype == np.float32 and noise.shape == (SIZE, SIZE)
    assert -1.01 <= noise.min() < 0.0 < noise.max() <= 1.01
    assert perlin_noise((50, 37), (4, 8), rng).shape == (50, 37)


def test_perlin_mask_covers_a_nontrivial_fraction():
    masks = [perlin_mask(SIZE, np.random.default_rng(s), max_exponent=6, threshold=0.5) for s in range(20)]
    assert all(m.dtype == bool and m.shape == (SIZE, SIZE) for m in masks)
    coverage = np.mean([m.mean() for m in masks])
    assert 0.01 < coverage < 0.3
    assert len({m.tobytes() for m in masks}) == len(masks)


def test_target_area_lies_inside_allowed_and_respects_extent():
    ring = disc_mask(radius=25) & ~disc_mask(radius=15)
    for seed in range(30):
        area = target_area(SIZE, np.random.default_rng(seed), allowed=ring, extent=(0.2, 0.5))
        assert area.any() and not (area & ~ring).any()
        free = target_area(SIZE, np.random.default_rng(seed), allowed=None, extent=(0.3, 0.3))
        rows, cols = np.nonzero(free)
        assert max(np.ptp(rows), np.ptp(cols)) <= 0.3 * SIZE + 2
    with pytest.raises(ValueError, match="empty"):
        target_area(SIZE, np.random.default_rng(0), allowed=np.zeros((SIZE, SIZE), bool), extent=(0.2, 0.5))


def test_color_ops_keep_shape_and_dtype():
    image = noise_image(0)
    for name, op in COLOR_OPS.items():
        out = op(image, np.random.default_rng(0))
        assert out.dtype == np.uint8 and out.shape == image.shape, name
    assert not np.array_equal(random_color_ops(image, np.random.default_rng(0), 2), image)
    with pytest.raises(ValueError):
        random_color_ops(image, np.random.default_rng(0), len(COLOR_OPS) + 1)


def test_shuffle_patches_permutes_whole_patches():
    image = noise_image(0)
    shuffled = shuffle_patches(image, 4, np.random.default_rng(0))

    def patches(picture: np.ndarray) -> set[bytes]:
        return {picture[r : r + 16, c : c + 16].tobytes() for r in range(0, SIZE, 16) for c in range(0, SIZE, 16)}

    assert patches(shuffled) == patches(image) and not np.array_equal(shuffled, image)


def test_otsu_separates_two_modes():
    values = np.concatenate([np.full(100, 10.0), np.full(50, 90.0)])
    threshold = otsu_threshold(values)
    assert 10.0 <= threshold < 90.0


def test_foreground_of_a_dark_disc_is_the_disc():
    truth = disc_mask(centre=(30, 35), radius=20)
    estimate = estimate_foreground(disc_image(5, centre=(30, 35), radius=20))
    assert (estimate & truth).sum() / (estimate | truth).sum() > 0.9


def test_detect_category_type():
    discs = np.stack([disc_image(s, centre=(28 + s, 36 - s), radius=16 + s) for s in range(4)])
    assert detect_category_type(discs) == "object"
    noise = np.stack([noise_image(s) for s in range(4)])
    assert detect_category_type(noise) == "texture"
    assert detect_category_type(procedural_textures(4, SIZE, np.random.default_rng(0))) == "texture"


def test_foreground_masks():
    images = np.stack([disc_image(0), disc_image(1)])
    assert foreground_masks(images, "texture").all()
    masks = foreground_masks(images, "object")
    assert masks.shape == (2, SIZE, SIZE) and masks.dtype == bool and 0.1 < masks.mean() < 0.5
    with pytest.raises(ValueError, match="category_type"):
        foreground_masks(images, "auto")


def test_load_textures(tmp_path):
    nested = tmp_path / "a" / "b"
    nested.mkdir(parents=True)
    Image.fromarray(noise_image(0)).save(tmp_path / "one.png")
    Image.fromarray(noise_image(1)[:, :40]).save(nested / "two.PNG")  # non-square: centre-cropped
    Image.fromarray(noise_image(2)).save(tmp_path / "a" / "three.jpg")
    (tmp_path / "notes.txt").write_text("not an image")
    textures = load_textures(tmp_path, 16)
    assert textures.shape == (3, 16, 16, 3) and textures.dtype == np.uint8


def test_load_textures_errors_name_the_culprit(tmp_path):
    with pytest.raises(DataError, match=str(tmp_path)):
        load_textures(tmp_path, 16)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"broken\.png"):
        load_textures(tmp_path, 16)


def test_procedural_textures_are_varied():
    textures = procedural_textures(6, SIZE, np.random.default_rng(0))
    assert textures.shape == (6, SIZE, SIZE, 3) and textures.dtype == np.uint8
    assert len({t.tobytes() for t in textures}) == 6
    assert all(t.std() > 5 for t in textures)
    np.testing.assert_array_equal(textures, procedural_textures(6, SIZE, np.random.default_rng(0)))


def test_synth_grid_draws_one_row_per_kind():
    normal = disc_image(0)
    results = {kind.upper(): generate(kind, seed=1) for kind in KINDS}
    grid = synth_grid(normal, results)
    assert grid.dtype == np.uint8 and grid.ndim == 3 and grid.shape[2] == 3
    assert grid.shape[0] >= 3 * SIZE and grid.shape[1] > 3 * SIZE


@pytest.mark.parametrize("kind", KINDS)
def test_min_anomaly_fraction_rejects_small_masks(kind):
    """With a floor on the simulated anomaly's size, every mask drawn (over many seeds) reaches it."""
    floor = 0.01
    config = SynthConfig(min_anomaly_fraction=floor, max_tries=200)
    sizes = [generate(kind, seed, config=config)[1].mean() for seed in range(40)]
    assert min(sizes) >= floor
    plain = [generate(kind, seed)[1].mean() for seed in range(40)]
    assert min(plain) < floor <= min(sizes)  # the floor changes something
