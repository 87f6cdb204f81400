"""Benchmark: the image threshold's rules against what a line sees, and what each run promised.

    python benchmarks/calibration.py runs/cal/bottle_s0 runs/cal/screw_s0 --name calibration_default

Each finished run is copied to ``<run>_cal`` and calibrated anew (``prnad.calibrate``: the held-out normals
scored out of sample). Then every rule sets the image threshold from the run's stored calibration scores
alone (never a test image): ``balanced`` (highest TPR - FPR on the held-out normals and simulated anomalies),
``f1`` (highest F1 on them), ``far<R>`` (conformal: a new normal flagged with probability at most R). Each is
evaluated on the run's test split: the share of good parts flagged against the run's promise (expected rate
and 90 % bound), the share of defective parts missed, image F1 and the best F1 any threshold gives in
hindsight. ``--layout DIR`` adds each run's metrics on a layout-anomaly set (``prnad layout-set``), per kind.
Results: ``<results>/<name>.json`` and ``.md``, with the command, machine and date. It prints what it measured.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import shlex
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

import prnad
from prnad.thresholds import balanced_threshold, conformal_threshold, f1_optimal_threshold

REPO = Path(__file__).resolve().parents[1]
RULES = ("balanced", "f1", "far0.1", "far0.05", "far0.02")


def rule_threshold(rule: str, fitted: dict) -> float:
    """The image threshold ``rule`` sets from a run's calibration scores (normals 0, simulated anomalies 1)."""
    normal, anomalies = fitted["normal_scores"], fitted["anomaly_scores"]
    if rule.startswith("far"):
        return conformal_threshold(np.array(normal), float(rule[3:]))
    scores, labels = np.array(normal + anomalies), np.array([0] * len(normal) + [1] * len(anomalies))
    fit = {"balanced": balanced_threshold, "f1": f1_optimal_threshold}[rule]
    return fit(scores, labels)[0]


def _row(result: dict) -> dict:
    image = result["at_threshold"]["image"]
    keys = ("good_flagged", "defective_missed", "precision", "recall", "f1", "f1_best", "fp", "fn", "tp", "tn")
    return {k: image[k] for k in keys} | {
        "threshold": result["at_threshold"]["image_threshold"],
        "promise": image["promise"],
        "pixel_f1": result["at_threshold"]["pixel"]["f1"],
        "good_with_mask": result["at_threshold"]["pixel"]["good_with_mask"],
    }


def measure(run: Path, rules: list[str], layout: Path | None) -> dict:
    """Calibrate a copy of ``run`` and evaluate every rule's image threshold (and the layout set)."""
    copy = run.with_name(f"{run.name}_cal")
    if copy.exists():
        shutil.rmtree(copy)
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("export", "checkpoint.safetensors"))
    detector = prnad.calibrate(copy, device="cpu")
    fitted = detector.info["thresholds"]
    out = {
        "category": Path(detector.config.data.root).name,
        "seed": detector.config.train.seed,
        "held_out_normals": len(fitted["normal_scores"]),
        "out_of_sample": fitted["out_of_sample"],
        "pixel_promise": fitted["pixel_promise"],
        "rules": {},
    }
    for rule in rules:
        detector.image_threshold = rule_threshold(rule, fitted)
        result = detector.evaluate()
        out["metrics"] = result["metrics"]
        out["rules"][rule] = _row(result)
        print(json.dumps({"run": str(run), "rule": rule, **out["rules"][rule]}), flush=True)
    if layout is not None:
        result = detector.evaluate(layout)
        out["layout"] = {"metrics": result["metrics"], "per_type": result["per_type"]}
        print(json.dumps({"run": str(run), "layout": out["layout"]}), flush=True)
    return out


def _by_category(data: dict) -> dict[str, list[dict]]:
    """The measured runs of ``data`` grouped by category."""
    groups: dict[str, list[dict]] = {}
    for r in data["runs"].values():
        groups.setdefault(r["category"], []).append(r)
    return groups


def choose_on_the_others(data: dict) -> dict[str, dict]:
    """Cross-validation over categories: for each category, the rule with the smallest mean F1 shortfall (best F1
    in hindsight minus F1) on the runs of the other categories, and what it gives on this category's runs."""
    by_category = _by_category(data)
    rules = sorted({rule for r in data["runs"].values() for rule in r["rules"]})

    def shortfall(runs: list[dict], rule: str) -> float:
        return float(np.mean([r["rules"][rule]["f1_best"] - r["rules"][rule]["f1"] for r in runs]))

    out = {}
    for category, runs in sorted(by_category.items()):
        others = [r for c, rs in by_category.items() if c != category for r in rs]
        if not others:
            continue
        chosen = min(rules, key=lambda rule: shortfall(others, rule))
        out[category] = {
            "rule": chosen,
            "shortfall_on_others": shortfall(others, chosen),
            "shortfall_here": shortfall(runs, chosen),
            "good_flagged_here": float(np.mean([r["rules"][chosen]["good_flagged"] for r in runs])),
        }
    return out


def _mean_lines(data: dict) -> list[str]:
    """Per category and rule, means over its runs (seeds): the metrics, the shares at the threshold, the F1
    shortfall to the best threshold in hindsight, and in how many runs the good parts flagged stayed within
    the run's 90 % bound."""
    by_category = _by_category(data)
    lines = ["", "Means over each category's runs (seeds):", ""]
    lines += ["| category | seeds | I / P / PRO / AP | rule | good flagged | bound | within bound | F1 | best F1 |"]
    lines += ["| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for category, runs in sorted(by_category.items()):
        seeds = ",".join(str(r["seed"]) for r in sorted(runs, key=lambda r: r["seed"]))
        metrics = " / ".join(
            f"{np.mean([r['metrics'][k] for r in runs]):.2f}" for k in ("image_auroc", "pixel_auroc", "pro", "pixel_ap")
        )
        for rule in runs[0]["rules"]:
            rows = [r["rules"][rule] for r in runs]
            within = sum(m["good_flagged"] <= 100 * m["promise"]["bound"] for m in rows)
            lines.append(
                f"| {category} | {seeds} | {metrics} | {rule} | {np.mean([m['good_flagged'] for m in rows]):.1f} | "
                f"{100 * np.mean([m['promise']['bound'] for m in rows]):.1f} | {within} of {len(rows)} | "
                f"{np.mean([m['f1'] for m in rows]):.1f} | {np.mean([m['f1_best'] for m in rows]):.1f} |"
            )
    return lines


def _markdown(data: dict) -> str:
    lines = [
        f"# Image threshold rules at the line ({data['date']})",
        "",
        f"`{data['command']}`; {data['machine']}. Thresholds from each run's calibration scores only (held-out",
        "normals scored out of sample, simulated anomalies); the test split only measures them. Good flagged and",
        "defective missed in percent of the test's good and defective parts; promise: expected false-alarm rate",
        "and its 90 % bound, from the held-out normals.",
        "",
        "| run | rule | good flagged | promised (90 % bound) | defective missed | image F1 | best F1 | pixel F1 |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for run, r in data["runs"].items():
        for rule, m in r["rules"].items():
            p = m["promise"]
            lines.append(
                f"| {run} | {rule} | {m['good_flagged']:.1f} ({m['fp']}) | {100 * p['expected_rate']:.1f} "
                f"({100 * p['bound']:.1f}) | {m['defective_missed']:.1f} ({m['fn']}) | {m['f1']:.1f} | "
                f"{m['f1_best']:.1f} | {m['pixel_f1']:.1f} |"
            )
    lines += _mean_lines(data)
    chosen = choose_on_the_others(data)
    if chosen:
        lines += ["", "Chosen on the other categories (smallest mean F1 shortfall there), measured here:", ""]
        for category, c in chosen.items():
            lines.append(
                f"- {category}: {c['rule']} (shortfall {c['shortfall_on_others']:.1f} on the others); here "
                f"shortfall {c['shortfall_here']:.1f}, good flagged {c['good_flagged_here']:.1f} %"
            )
    layouts = {run: r["layout"] for run, r in data["runs"].items() if "layout" in r}
    if layouts:
        lines += ["", "Layout-anomaly set (pixel AUROC / pixel AP per kind):", ""]
        for run, layout in layouts.items():
            kinds = ", ".join(
                f"{kind} {m['pixel_auroc']:.1f} / {m['pixel_ap']:.1f}" for kind, m in layout["per_type"].items()
            )
            overall = layout["metrics"]
            lines.append(f"- {run}: all {overall['pixel_auroc']:.1f} / {overall['pixel_ap']:.1f}; {kinds}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path, help="finished runs with held-out normals")
    p.add_argument("--rules", nargs="+", default=list(RULES), help=f"image threshold rules (default {RULES})")
    p.add_argument("--layout", type=Path, nargs="*", help="layout-anomaly sets, one per run (prnad layout-set)")
    p.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results")
    p.add_argument("--name", default="calibration")
    p.add_argument("--report-only", action="store_true", help="rewrite the Markdown from the JSON, measure nothing")
    args = p.parse_args(argv)
    if args.report_only:
        data = json.loads((args.results / f"{args.name}.json").read_text())
        (args.results / f"{args.name}.md").write_text(_markdown(data))
        return data
    layouts = args.layout or [None] * len(args.runs)
    if len(layouts) != len(args.runs):
        p.error("give one layout set per run, or none")
    data = {
        "command": "python " + shlex.join(["benchmarks/calibration.py", *(sys.argv[1:] if argv is None else argv)]),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
        "date": dt.date.today().isoformat(),
        "runs": {str(run): measure(run, args.rules, layout) for run, layout in zip(args.runs, layouts, strict=True)},
    }
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / f"{args.name}.json").write_text(json.dumps(data, indent=2))
    (args.results / f"{args.name}.md").write_text(_markdown(data))
    return data


if __name__ == "__main__":
    main()
