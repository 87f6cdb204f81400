"""Ablation: candidate config changes, each trained and evaluated per category and seed; one table of them all.

    python benchmarks/ablation.py --categories screw --seeds 0 --iterations 300 --candidates baseline location
    python benchmarks/ablation.py --report-only

Every candidate is a set of config overrides (CANDIDATES below). Each (candidate, category, seed) run is a
record in ``benchmarks/results/ablation.json`` (merged under a lock, with its command, machine, date and
schedule), and ``ablation.md`` tables the mean over the seeds measured, per schedule, beside the paper.
Screening runs on a short schedule are marked by their iteration count: compare candidates only within one
schedule and one device. It prints what it measured, never a target.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import bottle  # the per-seed runner, alongside this file

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "mvtec_ad"
# Every candidate starts from the spec's model, whatever the package defaults are now (they moved as candidates
# won): whole-map prototypes, no score banks, the head on all three scales. CHANGES lists what each one changes.
SPEC: dict[str, object] = {
    "model.prototype_match": "map",
    "model.score_bank_size": 0,
    "model.head_scales": [0, 1, 2],
    "model.msa_scales": [0, 1, 2],
    "model.decoder_bottom": True,
}
FAST: dict[str, object] = {
    "model.prototype_match": "patch",
    "model.score_bank_size": 4096,
    "model.head_scales": [1, 2],
    "model.msa_scales": [2],
    "model.decoder_bottom": False,
    "model.decoder_channels": [64, 32, 16],
    "model.msa_blocks": 1,
}
CHANGES: dict[str, dict[str, object]] = {
    "baseline": {},
    "location": {"model.prototype_match": "location"},  # nearest prototype per location, not per map
    "smooth4": {"model.score_smoothing": 4.0},  # top-K of the map blurred by a Gaussian, sigma 4 px
    "min_anomaly": {"synth.min_anomaly_fraction": 0.001},  # simulated anomalies of at least ~66 px at 256
    "full_kv": {"model.msa_max_kv": 16},  # keys/values at full resolution in the 4x4 windows at stride 4
    "ratio20": {"model.prototype_ratio": 0.2},  # twice the prototypes
    # every normal map a prototype (no K-means averaging of parts at other angles), matched per location
    "location_all": {"model.prototype_match": "location", "model.prototype_ratio": 1.0},
    # per location, the nearest of 1024 normal location vectors from anywhere in any normal image (PatchCore-like)
    "patch": {"model.prototype_match": "patch"},
    # a lighter head for CPU speed (issue: deploy on the line): no MSA at stride 4, half the decoder widths
    "patch_light": {
        "model.prototype_match": "patch",
        "model.msa_scales": [1, 2],
        "model.decoder_channels": [64, 32, 16],
    },
    # image score = z-sum of the top-K map score and the largest nearest-neighbour distances to 4096 normal
    # (3x3-averaged) vectors at strides 8 and 16, standardised on the held-out normals
    "patch_bank": {"model.prototype_match": "patch", "model.score_bank_size": 4096},
    # the same head on strides 8 and 16 only (map decoded at stride 8), MSA at stride 16 only
    "patch_bank_light": {
        "model.prototype_match": "patch",
        "model.score_bank_size": 4096,
        "model.head_scales": [1, 2],
        "model.msa_scales": [2],
    },
    # the light head on a longer schedule: with the training cache of frozen parts (train.feature_cache_mb) a
    # step takes about a third less, so 3000 steps take what 2200 took before
    "patch_bank_light_3000": {
        "model.prototype_match": "patch",
        "model.score_bank_size": 4096,
        "model.head_scales": [1, 2],
        "model.msa_scales": [2],
        "train.iterations": 3000,
    },
    # a faster head (issue: deploy on the line): the decoder starts at stride 16 (the encoder stops there), half
    # the decoder widths, one MSA block
    "patch_bank_fast": FAST,
    # the same with 512 patch-bank vectors per scale instead of 1024
    "patch_bank_fast_bank512": {**FAST, "model.patch_bank_size": 512},
    # the default (light) head with the fast head's one change that also saves encoder time: the decoder starts
    # at stride 16 (the encoder stops there); decoder widths and MSA blocks as the defaults
    "patch_bank_nobottom": {
        "model.prototype_match": "patch",
        "model.score_bank_size": 4096,
        "model.head_scales": [1, 2],
        "model.msa_scales": [2],
        "model.decoder_bottom": False,
    },
    # the first 8 ms preset: the fast head with the spec's whole-map prototypes and no score banks (no
    # nearest-neighbour search over memory banks at inference)
    "line_map": {**FAST, "model.prototype_match": "map", "model.score_bank_size": 0},
    # the line preset (configs/line.yaml): line_map made cheaper where its profile spends most (issue: deploy
    # on the line), one whole-map attention branch instead of three window sizes and half the decoder widths
    "line_lite": {
        **FAST,
        "model.prototype_match": "map",
        "model.score_bank_size": 0,
        "model.msa_grids": [1],
        "model.decoder_channels": [32, 16, 8],
    },
    # the balanced preset (configs/balanced.yaml): the line preset with the default's score banks (4096 vectors
    # per scale at strides 8 and 16, queried every 8 px); the banks never enter the loss, so
    # benchmarks/score_bank.py adding them to the line_lite runs gives what training this candidate gives
    "line_banks": {
        **FAST,
        "model.prototype_match": "map",
        "model.score_bank_size": 4096,
        "model.msa_grids": [1],
        "model.decoder_channels": [32, 16, 8],
    },
}
CANDIDATES: dict[str, dict[str, object]] = {name: {**SPEC, **changes} for name, changes in CHANGES.items()}


def candidate_sets(name: str) -> list[str]:
    """Candidate ``name``'s config as ``--set KEY=VALUE`` items (values as JSON, which the YAML parser reads)."""
    return [f"{k}={json.dumps(v)}" for k, v in CANDIDATES[name].items()]


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--categories", nargs="+", default=["screw", "bottle"])
    p.add_argument("--data-root", default=str(DATA), help="folder of the category folders")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--iterations", type=int, help="training steps (default: the config's train.iterations)")
    p.add_argument("--candidates", nargs="+", default=list(CANDIDATES), choices=list(CANDIDATES))
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="applies to every run")
    p.add_argument("--textures", default=str(REPO.parent / "shared/data/dtd/images"))
    p.add_argument("--weights", help="encoder weights file (default: the config's)")
    p.add_argument("--results", default=str(REPO / "benchmarks" / "results"))
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--merge", nargs="+", default=[], help="ablation.json files (e.g. from a GPU) to merge in")
    p.add_argument(
        "--import-baseline", nargs="+", default=[], help="benchmarks/results/<category>.json runs to add as --import-as"
    )
    p.add_argument(
        "--import-as",
        default="baseline",
        choices=sorted(CANDIDATES),
        help="the candidate the --import-baseline runs were trained as (default: baseline)",
    )
    return p.parse_args(argv)


def _seed_args(args: argparse.Namespace, candidate: str, category: str) -> list[str]:
    sets = candidate_sets(candidate) + list(args.set)
    if args.iterations:
        sets.append(f"train.iterations={args.iterations}")
    argv = ["--data", str(Path(args.data_root) / category), "--textures", args.textures, "--name", "ablation"]
    argv += ["--runs", str(REPO / "runs" / "ablation" / f"{category}_{candidate}")]
    argv += [part for item in sets for part in ("--set", item)]
    return argv + (["--weights", args.weights] if args.weights else [])


def record(path: Path, key: str, run: dict) -> None:
    with bottle.locked(path):
        data = json.loads(path.read_text()) if path.is_file() else {"runs": {}}
        data["runs"][key] = run
        path.write_text(json.dumps(data, indent=2) + "\n")
        write_markdown(path.with_suffix(".md"), data)


def _groups(data: dict) -> dict[tuple, list[dict]]:
    groups: dict[tuple, list[dict]] = {}
    for run in data["runs"].values():
        key = (run["category"], run["iterations"], run["device"], run["candidate"])
        groups.setdefault(key, []).append(run)
    return dict(sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2], kv[0][3] != "baseline")))


def write_markdown(path: Path, data: dict) -> None:
    lines = [
        "# Ablation of candidate changes (issue: beat the one-class baseline on every category)",
        "",
        "Mean over the seeds measured; compare rows only within one category, schedule and device.",
        "Every candidate starts from the spec's model ("
        + ", ".join(f"{k}={v}" for k, v in SPEC.items())
        + "); 'overrides' lists what it changes.",
        "'normals held out': normal training images kept apart to fit the decision thresholds (since 2026-11-27;",
        "earlier runs trained on every normal image).",
        "",
        "| category | steps | device | candidate | overrides | seeds | normals held out | image AUROC | pixel AUROC "
        "| PRO | pixel AP |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (category, steps, device, candidate), runs in _groups(data).items():
        means = [statistics.fmean(r["metrics"][k] for r in runs) for k in bottle.NAMES]
        seeds = ",".join(str(r["seed"]) for r in sorted(runs, key=lambda r: r["seed"]))
        held = ",".join(sorted({str(r.get("normals_held_out", 0)) for r in runs}))
        overrides = ", ".join(f"{k}={v}" for k, v in CHANGES.get(candidate, {}).items()) or "-"
        lines.append(
            f"| {category} | {steps} | {device} | {candidate} | {overrides} | {seeds} | {held} | "
            + " | ".join(f"{m:.1f}" for m in means)
            + " |"
        )
    for category, paper in bottle.PAPER.items():
        lines.append(
            f"| {category} | | | paper (ResNet18) | | | | " + " | ".join(f"{paper[k]:.1f}" for k in bottle.NAMES) + " |"
        )
    lines += ["", "Commands:", ""]
    lines += sorted({f"- `{r['ablation_command']}`" for r in data["runs"].values()})
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    args = _args(argv)
    path = Path(args.results) / "ablation.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    for other in args.merge:
        for key, run in json.loads(Path(other).read_text())["runs"].items():
            record(path, key, run)
    name = args.import_as
    for bench in args.import_baseline:
        data = json.loads(Path(bench).read_text())
        for run in data["runs"].values():
            run = {**run, "candidate": name, "category": data["category"], "ablation_command": run["command"]}
            record(path, f"{data['category']}/{name}/{run['iterations']}/{run['device']}/seed{run['seed']}", run)
    if args.report_only or args.merge or args.import_baseline:
        write_markdown(path.with_suffix(".md"), json.loads(path.read_text()))
        return
    command = "python benchmarks/ablation.py " + " ".join(sys.argv[1:])
    for category in args.categories:
        for candidate in args.candidates:
            seed_args = bottle._args(_seed_args(args, candidate, category))
            for seed in args.seeds:
                run = bottle.run_seed(seed_args, seed)
                run.update(candidate=candidate, category=category, ablation_command=command)
                record(path, f"{category}/{candidate}/{run['iterations']}/{run['device']}/seed{seed}", run)
                print(json.dumps({k: run[k] for k in ("category", "candidate", "seed", "metrics", "train_minutes")}))


if __name__ == "__main__":
    main()
