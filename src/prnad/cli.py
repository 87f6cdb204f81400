"""The ``prnad`` command line: train, evaluate, calibrate, predict, export, synth, layout-set, benchmark, demo.

Thin: it turns flags into the arguments of :mod:`prnad.api` and prints what comes back. Exit status: 0 done;
1 ``predict`` scored some inputs but not all (each failure is reported); 2 a user error, with its message.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Sequence
from typing import Any

from prnad import api
from prnad._version import __version__
from prnad.config import BACKBONES, LAYOUTS
from prnad.errors import PrnadError


def _add_model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backbone", choices=BACKBONES, help="encoder (default resnet18); see docs/cli.md, Encoder weights")
    p.add_argument("--backbone-weights", help="imagenet (download when online), random, or a local state-dict file")
    p.add_argument(
        "--input-norm", choices=["auto", "imagenet", "tf"], help="input normalisation (default auto: the encoder's own)"
    )
    p.add_argument(
        "--tf-same-padding",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="TensorFlow SAME padding on or off (default: the encoder's own)",
    )


def _add_train_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config file; flags override it")
    p.add_argument(
        "--preset",
        choices=list(api.PRESETS),
        help="under --config and flags: default, line (the fastest), balanced (between), paper (the paper's model)",
    )
    p.add_argument("--seed", type=int, help="seed of the split, prototypes, initialisation and synthesis (default 0)")
    p.add_argument("--seen-anomalies", type=int, help="defect images moved from test to train (default 10; 0 allowed)")
    p.add_argument(
        "--seen-defect-types",
        nargs="+",
        metavar="TYPE",
        help="hard setting: every seen anomaly from these defect types (evaluation reports seen and unseen apart)",
    )
    p.add_argument(
        "--layout",
        choices=list(LAYOUTS),
        help="dataset layout (default auto: MVTec AD, MVTec 3D-AD, BTAD, DAGM 2007, KolektorSDD2 or VisA by its tree)",
    )
    p.add_argument("--normal-dir", help="folder layout: the good images, below --data")
    p.add_argument("--abnormal-dir", help="folder layout: the defective images, below --data")
    p.add_argument("--mask-dir", help="folder layout: the defect masks (by stem, with or without _mask), below --data")
    p.add_argument("--normal-test-dir", help="folder layout: good test images (default: a fixed fifth of --normal-dir)")
    p.add_argument("--textures", help="folder of texture images for HEA (default: procedural textures)")
    p.add_argument("--iterations", type=int, help="training steps (fixed budget)")
    p.add_argument("--batch-size", type=int, help="images per step")
    p.add_argument("--image-size", type=int, help="training and evaluation resolution (default 256)")
    p.add_argument("--workers", type=int, help="DataLoader workers for anomaly synthesis")
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:1 ...")
    p.add_argument(
        "--holdout-fraction", type=float, help="share of normal images kept apart to fit thresholds (default 0.1)"
    )
    p.add_argument(
        "--max-false-alarm-rate",
        type=float,
        help="image threshold flagging a new normal image with at most this probability (conformal; default 0.1)",
    )
    p.add_argument(
        "--score-bank-size",
        type=int,
        help="normal vectors per score bank (default 4096; 0: the spec's top-K score alone, no held-out images needed)",
    )
    p.add_argument(
        "--pixel-false-alarm-rate",
        type=float,
        help="pixel threshold flags at most this share of held-out normal pixels (default 1e-05)",
    )
    _add_model_flags(p)


def _add_engine_options(p: argparse.ArgumentParser) -> None:
    """--device, --engine, --precision and --spin of the commands that run a trained model (evaluate, predict)."""
    p.add_argument("--device", default="auto")
    p.add_argument("--engine", choices=list(api.ENGINES), default="torch", help="(default torch)")
    p.add_argument(
        "--precision",
        choices=["fp32", "fp16", "bf16"],
        default="fp32",
        help="fp32 (default); torch: fp16 or bf16 autocast; openvino: bf16",
    )
    p.add_argument(
        "--spin",
        choices=list(api.SPIN_MODES),
        default="off",
        help="onnxruntime: worker threads spin never (off, default) or only while an image is run (run: faster "
        "at batch 1, no core taken between images)",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prnad", description="Anomaly detection with Prototypical Residual Networks")
    parser.add_argument("--version", action="version", version=f"prnad {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train PRN on a category folder (MVTec AD layout)")
    p.add_argument("--data", help="dataset folder (MVTec AD category, or any --layout)")
    p.add_argument("--out", required=True, help="run folder for checkpoints and results")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace the run that the --out folder holds")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_train_flags(p)

    p = sub.add_parser("evaluate", help="evaluate a trained run on its test split")
    p.add_argument("run", help="run folder written by prnad train")
    p.add_argument("--save-maps", help="write each anomaly map as .npy and scores.csv into this folder")
    p.add_argument("--data", help="evaluate on this category folder instead of the one the run trained on")
    _add_engine_options(p)

    p = sub.add_parser("calibrate", help="refit a trained run's thresholds on its held-out normals (no training)")
    p.add_argument("run", help="run folder written by prnad train")
    p.add_argument(
        "--max-false-alarm-rate",
        type=float,
        help="image threshold flagging a new normal image with at most this probability (conformal)",
    )
    p.add_argument("--pixel-false-alarm-rate", type=float, help="pixel threshold: share of normal pixels flagged")
    p.add_argument(
        "--image-criterion",
        choices=["balanced", "f1"],
        help="image threshold by this criterion on held-out normals and simulated anomalies instead of a rate",
    )
    p.add_argument("--device", default="auto")

    p = sub.add_parser("synth", help="write a picture of generated anomalies (EA, HEA, HOA) for a category")
    p.add_argument("--data", required=True, help="category folder")
    p.add_argument("--out", default="synth.png", help="picture to write (default synth.png)")
    p.add_argument("--textures", help="texture folder for HEA (default: procedural)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seen-anomalies", type=int, default=10)
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--category-type", choices=["auto", "object", "texture"], default="auto")

    p = sub.add_parser("layout-set", help="write an evaluation set of layout anomalies (parts removed, moved, rotated)")
    p.add_argument("--data", required=True, help="category folder whose normal test images the anomalies come from")
    p.add_argument("--out", required=True, help="new folder for the set (MVTec AD layout; evaluate it with --data)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--per-kind", type=int, help="anomalies of each kind (default: one per normal test image)")

    p = sub.add_parser("predict", help="score new images with a trained run: decisions, masks, overlays, maps")
    p.add_argument("run", help="run folder written by prnad train")
    p.add_argument("images", nargs="+", help="image files or folders of images")
    p.add_argument(
        "--out",
        required=True,
        help="folder for <name>.npy maps, <name>_mask.png, <name>_overlay.png, results.csv and results.jsonl",
    )
    p.add_argument("--batch-size", type=int, default=16, help="images read and scored at a time (default 16)")
    _add_engine_options(p)
    limit = p.add_mutually_exclusive_group()
    limit.add_argument("--threshold", type=float, help="image threshold: score > T is anomalous (default: the run's)")
    limit.add_argument(
        "--max-false-alarm-rate",
        type=float,
        help="image threshold flagging a new normal image with at most this probability (conformal)",
    )
    p.add_argument("--pixel-threshold", type=float, help="mask = map > T (default: the run's)")

    p = sub.add_parser("export", help="export a run's whole model as one graph (ONNX or OpenVINO IR)")
    p.add_argument("run", help="run folder written by prnad train")
    p.add_argument("--format", choices=["onnx", "openvino"], default="onnx", help="graph format (default onnx)")

    p = sub.add_parser("benchmark", help="run an experiment file: variants x datasets x seeds, one report")
    p.add_argument("experiment", help="experiment YAML file (see docs/benchmarks.md)")
    p.add_argument("--out", help="folder for the runs, cell records and report (default runs/<experiment name>)")
    p.add_argument("--report", help="folder for report.md and report.json (default --out)")
    p.add_argument("--executor", choices=["local", "ray"], default="local", help="local (default): one cell at a time")
    p.add_argument("--address", help="ray: the cluster's address (default: start a local Ray)")
    p.add_argument("--cpus-per-cell", type=float, default=1, help="ray: CPUs each cell's task asks for (default 1)")

    p = sub.add_parser("demo", help="make a small synthetic category, train on it, evaluate (offline, CPU)")
    p.add_argument("--out", default="prnad_demo", help="folder for the demo data and run (default prnad_demo)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--iterations", type=int, default=None, help="training steps (default: the demo's few-minute budget)"
    )
    p.add_argument("--image-size", type=int, default=None, help="resolution (default 128 for the demo)")
    p.add_argument("--device", default="auto")
    p.add_argument("--keep", action="store_true", help="refuse to replace an earlier demo run in --out")
    p.add_argument("--no-progress", action="store_true")
    _add_model_flags(p)
    return parser


def _set(values: dict[str, Any], dotted: str, value: Any) -> None:
    if value is None:
        return
    *parents, leaf = dotted.split(".")
    node = values
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value


FLAG_KEYS = {
    "data": "data.root",
    "seen_anomalies": "data.seen_anomalies",
    "seen_defect_types": "data.seen_defect_types",
    "layout": "data.layout",
    "normal_dir": "data.normal_dir",
    "abnormal_dir": "data.abnormal_dir",
    "mask_dir": "data.mask_dir",
    "normal_test_dir": "data.normal_test_dir",
    "textures": "data.textures",
    "image_size": "data.image_size",
    "backbone": "model.encoder.backbone",
    "backbone_weights": "model.encoder.weights",
    "input_norm": "model.encoder.input_norm",
    "tf_same_padding": "model.encoder.tf_same_padding",
    "seed": "train.seed",
    "iterations": "train.iterations",
    "batch_size": "train.batch_size",
    "workers": "train.num_workers",
    "device": "train.device",
    "holdout_fraction": "threshold.holdout_fraction",
    "max_false_alarm_rate": "threshold.max_false_alarm_rate",
    "pixel_false_alarm_rate": "threshold.pixel_false_alarm_rate",
    "score_bank_size": "model.score_bank_size",
}


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The config values that flags set explicitly, as a nested dict (flags left out set nothing)."""
    flags: dict[str, Any] = {}
    for attr, key in FLAG_KEYS.items():
        _set(flags, key, getattr(args, attr, None))
    return flags


def _cmd_train(args: argparse.Namespace) -> int:
    detector = api.train(
        None,
        args.out,
        config=args.config,
        preset=args.preset,
        overrides=overrides_from_args(args),
        resume=args.resume,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    fitted = detector.info.get("thresholds")
    if fitted:
        print(promise_line(fitted))
    print(f"trained model written to {args.out}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    detector = api.load(args.run, device=args.device, engine=args.engine, precision=args.precision, spin=args.spin)
    result = detector.evaluate(args.data, save_maps=args.save_maps)
    print(api.format_table(result))
    print(f"metrics written to {detector.run_dir / 'metrics.json'}")
    return 0


def _cmd_calibrate(args: argparse.Namespace) -> int:
    keys = ("max_false_alarm_rate", "pixel_false_alarm_rate", "image_criterion")
    threshold = {key: getattr(args, key) for key in keys if getattr(args, key) is not None}
    if args.image_criterion and args.max_false_alarm_rate is None:
        threshold["max_false_alarm_rate"] = None  # a criterion asked for replaces the default's rate
    detector = api.calibrate(args.run, threshold, device=args.device)
    print(promise_line(detector.info["thresholds"]))
    print(f"thresholds written to {detector.run_dir / 'model.safetensors'}")
    return 0


def promise_line(fitted: dict[str, Any]) -> str:
    """The thresholds, how the image one was chosen and what each promises on new normal images."""
    promise, pixel = fitted["promise"], fitted.get("pixel_promise")
    line = (
        f"image threshold {fitted['image']:.4g} ({fitted['image_method']}): new normal images flagged "
        f"{100 * promise['expected_rate']:.1f} % of the time on average, at most {100 * promise['bound']:.1f} % "
        f"with {100 * promise['confidence']:.0f} % confidence ({promise['normals']} held-out normals)"
    )
    if pixel:
        line += (
            f"\npixel threshold {fitted['pixel']:.4g}: a new normal image's mask non-empty "
            f"{100 * pixel['expected_rate']:.1f} % of the time on average, at most {100 * pixel['bound']:.1f} %"
        )
    return line


def _cmd_synth(args: argparse.Namespace) -> int:
    path = api.synth_preview(
        args.data,
        args.out,
        textures=args.textures,
        seed=args.seed,
        seen_anomalies=args.seen_anomalies,
        image_size=args.image_size,
        category_type=args.category_type,
    )
    print(f"generated anomalies written to {path}")
    return 0


def _cmd_layout_set(args: argparse.Namespace) -> int:
    path = api.layout_set(args.data, args.out, seed=args.seed, per_kind=args.per_kind)
    print(f"layout anomalies written to {path}; measure them with prnad evaluate RUN --data {path}")
    return 0


def _cmd_benchmark(args: argparse.Namespace) -> int:
    data = api.benchmark(
        args.experiment,
        args.out,
        report=args.report,
        executor=args.executor,
        address=args.address,
        cpus_per_cell=args.cpus_per_cell,
        command=shlex.join(["prnad", *args.argv]),
    )
    where = args.report or args.out or f"runs/{data['experiment']}"
    print(api.format_report(data))
    print(f"report written to {where}/report.md and report.json")
    return 0


def _decision(anomalous: bool | None) -> str:
    return {True: "ANOMALOUS", False: "ok", None: "-"}[anomalous]


def _cmd_predict(args: argparse.Namespace) -> int:
    detector = api.load(args.run, device=args.device, engine=args.engine, precision=args.precision, spin=args.spin)
    threshold = args.threshold
    if args.max_false_alarm_rate is not None:
        threshold = detector.false_alarm_threshold(args.max_false_alarm_rate)
    results = api.predict_folder(
        detector,
        args.images,
        args.out,
        batch_size=args.batch_size,
        threshold=threshold,
        pixel_threshold=args.pixel_threshold,
    )
    failed = 0
    for result in results:
        if result.ok:
            print(f"{result.score:.4f}  {_decision(result.is_anomalous):<9}  {result.source}")
        else:
            failed += 1
            print(f"prnad predict: error: {result.error}", file=sys.stderr)
    print(f"decisions, masks, overlays and maps written to {args.out} (results.csv, results.jsonl)")
    if failed:
        print(f"prnad predict: {failed} input(s) could not be scored (see results.csv)", file=sys.stderr)
    return 1 if failed else 0


def _cmd_export(args: argparse.Namespace) -> int:
    path = api.export(args.run, args.format)
    print(f"{args.format} export written to {path}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    result = api.demo(
        args.out,
        seed=args.seed,
        iterations=args.iterations,
        image_size=args.image_size,
        device=args.device,
        overrides=overrides_from_args(args),
        overwrite=not args.keep,
        progress=not args.no_progress,
    )
    print(json.dumps(result["metrics"]))
    return 0


COMMANDS = {
    "train": _cmd_train,
    "evaluate": _cmd_evaluate,
    "calibrate": _cmd_calibrate,
    "predict": _cmd_predict,
    "synth": _cmd_synth,
    "layout-set": _cmd_layout_set,
    "benchmark": _cmd_benchmark,
    "export": _cmd_export,
    "demo": _cmd_demo,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``prnad`` script; returns the exit status (2 on a user error, with its message)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    args.argv = argv  # as called, for the records that say how they were made
    try:
        return COMMANDS[args.command](args)
    except PrnadError as exc:
        print(f"prnad {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
