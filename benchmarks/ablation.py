"""Ablation: candidate config changes, each trained and evaluated per category and seed; one table of them all.

    python benchmarks/ablation.py --categories screw --seeds 0 --iterations 300 --candidates baseline location
    python benchmarks/ablation.py --report-only

Every candidate is a set of config overrides: a variant of benchmarks/experiments/ablation.yaml. Each (candidate, category, seed) run is a
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
from prnad.experiments import load_experiment

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "mvtec_ad"
CANDIDATES: dict[str, dict[str, object]] = {  # benchmarks/experiments/ablation.yaml's variants
    v.name: bottle.flattened(v.overrides) for v in load_experiment(bottle.ABLATION).variants
}
SPEC = CANDIDATES["baseline"]  # the spec's model, where every candidate starts
CHANGES = {name: {k: v for k, v in c.items() if k not in SPEC or SPEC[k] != v} for name, c in CANDIDATES.items()}


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
