"""Benchmark: inference time per image (batch 1, 256x256) of the encoder alone and of the whole PRN.

    python benchmarks/speed.py --backbones resnet18 mobilenet_v2

Time depends on shapes, not weight values, so random weights stand in (prototypes: 21 per scale, as for
209 normal images at the 10% ratio). The model is timed as evaluation runs it (BatchNorms folded).
Writes ``benchmarks/results/speed.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from prnad.config import EncoderConfig, ModelConfig
from prnad.model import build_encoder, build_prn
from prnad.model.prn import fused_for_inference
from prnad.utils import device_name, resolve_device

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def time_ms(fn, x: torch.Tensor, device: torch.device, *, warmup: int, repeats: int) -> list[float]:
    """Per-call wall times in ms of ``fn(x)`` after ``warmup`` untimed calls."""
    times = []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            fn(x)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i >= warmup:
                times.append((time.perf_counter() - start) * 1000)
    return times


def measure(backbone: str, device: torch.device, args: argparse.Namespace) -> dict:
    tf = backbone == "mobilenet_v2"  # the offline weights' padding, as the bottle benchmark uses it
    config = ModelConfig(encoder=EncoderConfig(backbone=backbone, weights="random", tf_same_padding=tf))
    torch.manual_seed(0)
    encoder = build_encoder(config.encoder)
    protos = [
        torch.randn(21, c, 256 // r, 256 // r) for c, r in zip(encoder.channels[:3], encoder.reductions, strict=False)
    ]
    model = fused_for_inference(build_prn(config, prototypes=protos, encoder=encoder)).to(device)
    x = torch.rand(1, 3, 256, 256, device=device)
    enc = time_ms(model.encoder, x, device, warmup=args.warmup, repeats=args.repeats)
    full = time_ms(model, x, device, warmup=args.warmup, repeats=args.repeats)
    return {
        "backbone": backbone,
        "tf_same_padding": tf,
        "encoder_ms_median": round(statistics.median(enc), 2),
        "prn_ms_median": round(statistics.median(full), 2),
        "prn_ms_mean": round(statistics.fmean(full), 2),
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbones", nargs="+", default=["resnet18", "mobilenet_v2"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeats", type=int, default=50)
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    rows = [measure(b, device, args) for b in args.backbones]
    data = {
        "device": device_name(device),
        "machine": platform.node(),
        "date": dt.date.today().isoformat(),
        "torch": torch.__version__,
        "command": "python benchmarks/speed.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "rows": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "speed.json").write_text(json.dumps(data, indent=2) + "\n")
    lines = [
        f"# Inference speed, batch 1, 256x256 ({data['device']}, torch {data['torch']}, {data['date']})",
        "",
        f"Command: `{data['command']}`",
        "",
        "| backbone | encoder ms (median) | PRN ms (median) | PRN ms (mean) | trainable params |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['backbone']} | {r['encoder_ms_median']} | {r['prn_ms_median']} | {r['prn_ms_mean']} | {r['trainable_parameters']:,} |"
        for r in rows
    ]
    (RESULTS / "speed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
