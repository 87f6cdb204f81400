"""Prepare the data a GPU run needs, small enough to travel with the repo (the device tool carries 64 MiB).

    python benchmarks/device_data.py            # writes device_data/ (git-ignored)

Writes: ``bottle_webp/`` (bottle at 256 px, images BILINEAR and masks NEAREST, as prnad sees them at its
default size, stored as lossless WebP: a third smaller than PNG), ``screw/`` (already 256 px, copied),
``dtd/`` (DTD centre-cropped and resized to 256 px as prnad's texture reader does, then JPEG quality 80:
not the original files, so GPU results are comparable among themselves, not bit for bit with CPU runs),
``weights/`` (the MobileNetV2 file) and ``unpack.py``, which turns ``bottle_webp`` back into PNGs there:

    python3 device_data/unpack.py device_data/bottle_webp device_data/bottle
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
UNPACK = '''"""On the device: turn the lossless WebP copies of a category back into the PNG layout prnad reads."""
import sys
from pathlib import Path

from PIL import Image

src, dst = Path(sys.argv[1]), Path(sys.argv[2])
for p in sorted(src.rglob("*.webp")):
    out = dst / p.relative_to(src).with_suffix(".png")
    out.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(p) as im:
        (im.convert("L") if "ground_truth" in p.parts else im.convert("RGB")).save(out)
print("unpacked", src, "->", dst)
'''


def category_webp(src: Path, dst: Path, size: int) -> None:
    """Every PNG of a category at ``size`` px (masks NEAREST, images BILINEAR) as lossless WebP."""
    for path in sorted(src.rglob("*.png")):
        out = dst / path.relative_to(src).with_suffix(".webp")
        out.parent.mkdir(parents=True, exist_ok=True)
        resample = Image.Resampling.NEAREST if "ground_truth" in path.parts else Image.Resampling.BILINEAR
        with Image.open(path) as im:
            im.resize((size, size), resample).save(out, "WEBP", lossless=True, quality=100, method=6)


def textures(src: Path, dst: Path, size: int) -> None:
    """Centre square crop, resize to ``size``, JPEG quality 80 (what prnad's texture reader would make of them)."""
    for path in sorted(src.rglob("*.jpg")):
        out = dst / path.relative_to(src)
        out.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(path) as im:
            im.draft("RGB", (size, size))
            w, h = im.size
            side = min(w, h)
            left, top = (w - side) // 2, (h - side) // 2
            im = im.convert("RGB").crop((left, top, left + side, top + side))
            im.resize((size, size), Image.Resampling.BILINEAR).save(out, quality=80)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(REPO / "device_data"))
    p.add_argument("--size", type=int, default=256)
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    category_webp(SHARED / "data/mvtec_ad/bottle", out / "bottle_webp", args.size)
    shutil.copytree(SHARED / "data/mvtec_ad/screw", out / "screw", dirs_exist_ok=True)
    textures(SHARED / "data/dtd/images", out / "dtd", args.size)
    (out / "weights").mkdir(exist_ok=True)
    shutil.copy(SHARED / "weights/mobilenet_v2_imagenet.pth", out / "weights")
    (out / "unpack.py").write_text(UNPACK)
    total = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 2**20
    print(f"{out}: {total:.1f} MiB (carry bottle_webp, screw, dtd, weights, unpack.py)")


if __name__ == "__main__":
    main()
