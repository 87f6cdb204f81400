"""Benchmark: seconds per training step, with and without the cache of frozen parts (``train.feature_cache_mb``).

    python benchmarks/train_step.py --data ../shared/data/mvtec_ad/screw --cache-mb 0 2048

Builds the run's training pool and model as ``prnad.train`` does (the config file and ``--set`` overrides, seed
0), then times ``--steps`` steps of the training loop (DataLoader workers as configured, the same step function)
after ``--warmup`` steps, once per cache budget, from the same fresh model. Results: ``<results>/<name>.json``
and ``.md``. It prints what it measured, never a target. Run it alone: a second CPU-heavy job distorts it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from bottle import dotted_overrides  # alongside this file
from prnad.config import build_config, load_yaml, merge
from prnad.training import trainer
from prnad.training.cache import FeatureCache
from prnad.utils import resolve_device

REPO = Path(__file__).resolve().parents[1]


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(REPO.parent / "shared/data/mvtec_ad/screw"))
    p.add_argument("--textures", default=str(REPO.parent / "shared/data/dtd/images"))
    p.add_argument("--config", default=str(REPO / "configs/mobilenet_v2_tf.yaml"))
    p.add_argument("--cache-mb", type=int, nargs="+", default=[0, 2048], help="cache budgets to time")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    p.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results")
    p.add_argument("--name", default="train_step")
    return p.parse_args(argv)


def time_steps(model, pool, config, device: torch.device, cache_mb: int, steps: int, warmup: int) -> dict:
    """Seconds to build the cache and mean seconds per step over ``steps`` steps after ``warmup``."""
    started = time.perf_counter()
    cache = FeatureCache(model, pool.unchanged(), budget_mb=cache_mb, device=device)
    built = time.perf_counter() - started
    optimizer = torch.optim.Adam(model.trainable_parameters(), lr=config.train.lr)
    model.train()
    for step, (images, masks, sources) in enumerate(trainer.training_loader(pool, config, 0)):
        if step == warmup:
            started = time.perf_counter()
        parts = cache.parts(model, images.to(device), sources)
        trainer.training_step(model, optimizer, parts, masks.to(device), config)
        if step + 1 == warmup + steps:
            break
    per_step = (time.perf_counter() - started) / steps
    return {"cache_mb": cache_mb, "cached_images": len(cache), "build_seconds": round(built, 2), "step_s": per_step}


def main(argv: list[str] | None = None) -> None:
    args = _args(argv)
    values = dotted_overrides(args.set, {"data": {"root": args.data, "textures": args.textures}})
    config = build_config(merge(load_yaml(args.config), values))
    device = resolve_device(config.train.device)
    category, seen = trainer.validated_split(config)
    pool, _, _ = trainer.build_pool(config, category, seen, np.random.default_rng(config.train.seed))
    fresh = trainer.start_fresh(config, pool, device)
    state = {k: v.clone() for k, v in fresh.state_dict().items()}
    rows = []
    for mb in args.cache_mb:
        fresh.load_state_dict(state)
        rows.append(time_steps(fresh, pool, config, device, mb, args.steps, args.warmup))
        print(json.dumps(rows[-1]), flush=True)
    data = {
        "command": "python " + shlex.join(["benchmarks/train_step.py", *(sys.argv[1:] if argv is None else argv)]),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, {device}",
        "date": dt.date.today().isoformat(),
        "category": Path(args.data).name,
        "batch_size": config.train.batch_size,
        "num_workers": config.train.num_workers,
        "unchanged_images": len(pool.unchanged()),  # what the stream serves as it is: normals, seen anomalies
        "rows": rows,
    }
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / f"{args.name}.json").write_text(json.dumps(data, indent=1) + "\n")
    lines = [
        "# Seconds per training step, with and without the cache of frozen parts",
        "",
        f"Command: `{data['command']}`",
        "",
        f"Machine: {data['machine']}, {data['date']}. Category {data['category']}, batch {data['batch_size']}, "
        f"{data['num_workers']} DataLoader worker(s); mean over {args.steps} steps after {args.warmup}.",
        "",
        f"Images the stream serves unchanged (normals, raw seen anomalies): {data['unchanged_images']}.",
        "",
        "| train.feature_cache_mb | images cached | cache built (s) | s per step |",
        "|---|---|---|---|",
        *(f"| {r['cache_mb']} | {r['cached_images']} | {r['build_seconds']} | {r['step_s']:.3f} |" for r in rows),
    ]
    (args.results / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
