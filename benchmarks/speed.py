"""Benchmark: inference speed of a trained run, per engine, batch 1 and 16, encoder alone and whole PRN,
and a per-part profile of the PyTorch model.

    python benchmarks/speed.py --run runs/bottle/seed0                # a trained run (weights as trained)
    python benchmarks/speed.py --config configs/mobilenet_v2_tf.yaml  # random head, the config's encoder weights

Times are wall-clock per call (ms per image = per call / batch), input already a float tensor (decoding
excluded), on the threads torch has (``--threads``): the median over ``--repeats`` calls after ``--warmup``
untimed ones. With ``--rounds`` R every cell is timed in R rounds, all cells (and engine processes) taking
turns in each round, and a row gives the median of the round medians and their range: on a machine whose
speed drifts, a slow spell then falls on every engine alike instead of on one.

Engines: ``torch`` (the BatchNorm-folded eval model), ``onnxruntime`` and ``openvino`` (the run's exported
graph, float32, threads spinning off), and ``onnxruntime spin=run`` (ONNX Runtime's threads spinning within a
run only, ``--ort-spin``); engines that are not installed are skipped and said so. With more than one
engine asked for, each is timed in a process of its own (``--no-isolate``: all in this one), as a deployment
runs one engine: in one process the engines' thread pools share the same cores. The processes are set up one
after another, then take turns, one timing at a time. The per-part profile runs the PyTorch model's forward
stage by stage (and checks that the stages give the model's own logits). With several
``--run``s (``--run A B``) every (run, engine) pair is a process of its own, all taking turns in the same
rounds, and every row names its model: models compared in one sitting, a slow spell falling on each alike.
Writes ``benchmarks/results/speed.json`` and ``speed.md``; prints what it measured.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

import prnad
from bottle import dotted_overrides  # alongside this file
from prnad.config import build_config, load_yaml
from prnad.export import (
    ENGINE_PRECISIONS,
    ENGINES,
    SPIN_MODES,
    OnnxRuntimeEngine,
    OpenVinoEngine,
    compile_openvino,
    export_onnx,
    export_openvino,
)
from prnad.model import build_encoder, build_prn
from prnad.model.prn import PRN, SCORE_SCALES, STAGES, fused_for_inference
from prnad.utils import device_name, resolve_device

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
# Pause between two processes' turns: a process's OpenMP threads spin for a while after its last call, and
# would take the cores from the next process's first calls.
PAUSE_S = 0.2
PARTS = STAGES  # the model's own stages, in order


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn: Callable, x: torch.Tensor, device: torch.device, *, warmup: int, repeats: int) -> list[float]:
    """Per-call wall times in ms of ``fn(x)`` after ``warmup`` untimed calls."""
    times = []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            _sync(device)
            start = time.perf_counter()
            fn(x)
            _sync(device)
            if i >= warmup:
                times.append((time.perf_counter() - start) * 1000)
    return times


@torch.inference_mode()
def reduced_map_diff(model: PRN, engine: Callable, x: torch.Tensor) -> float:
    """Largest difference of a reduced-precision engine's anomaly map on ``x`` to the float32 PyTorch ``model``'s
    (both on ``x``'s device)."""
    return float((engine(x).anomaly_map - model(x).anomaly_map).abs().max())


def random_model(config_path: str | None, prototypes: int, sets: list[str] = ()) -> tuple[PRN, int]:
    """A PRN with a random head, ``prototypes`` random prototypes per scale (or ``model.patch_bank_size`` bank
    vectors with patch matching) and random score banks when the config asks for them. The encoder has the
    weights the config names (a local file), random ones otherwise: timing depends on shapes, except that a
    random encoder's activations can fall to denormal floats, which slow some kernels several-fold."""
    layers = [load_yaml(config_path) if config_path else {}, dotted_overrides(list(sets))]
    config = build_config({"model": {"encoder": {"weights": "random"}}}, *layers)
    torch.manual_seed(0)
    encoder = build_encoder(config.model.encoder)
    size = config.data.image_size
    m = config.model
    shapes = [(encoder.channels[i], encoder.reductions[i]) for i in m.head_scales]
    if m.prototype_match == "patch":
        protos = [torch.randn(m.patch_bank_size, c, 1, 1) for c, _ in shapes]
    else:
        protos = [torch.randn(prototypes, c, size // r, size // r) for c, r in shapes]
    sizes = m.score_bank_sizes
    banks = (
        [torch.randn(n, encoder.channels[i]) for i, n in zip(SCORE_SCALES, sizes, strict=True)] if sizes[0] else None
    )
    return fused_for_inference(build_prn(m, prototypes=protos, encoder=encoder, score_banks=banks)), size


class EncoderOnly(torch.nn.Module):
    """The encoder's maps that the model reads, as a tuple (an exportable graph)."""

    def __init__(self, model: PRN) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        encoded, bottom = self.model.encoded(images)
        return (*encoded, *([] if bottom is None else [bottom]))


def _export_encoder(model: PRN, path: Path, size: int) -> Path:
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.onnx.export(
        EncoderOnly(model).eval(),
        (torch.rand(2, 3, size, size),),
        dynamo=True,
        input_names=["images"],
        dynamic_shapes={"images": {0: batch}},
        external_data=False,
    )
    program.save(str(path), external_data=False)
    return path


class _RawOrt(OnnxRuntimeEngine):
    def __call__(self, images: torch.Tensor):
        return self.session.run(None, {"images": images.numpy()})


class _RawOv:
    def __init__(self, path: Path, precision: str = "fp32") -> None:
        self.request = compile_openvino(path, precision=precision).create_infer_request()

    def __call__(self, images: torch.Tensor):
        return self.request.infer({"images": images.numpy()})


def runners(
    model: PRN,
    size: int,
    engines: list[str],
    folder: Path,
    skipped: dict,
    ov_precisions: tuple[str, ...] = ("fp32",),
    ort_spins: tuple[str, ...] = ("off",),
) -> dict[tuple[str, str], dict[str, Callable]]:
    """Per (engine, precision), callables for the whole model and for the encoder alone; ONNX Runtime once per
    spin mode of ``ort_spins`` (``onnxruntime`` spinning off, ``onnxruntime spin=run`` spinning within runs)."""
    out: dict[tuple[str, str], dict[str, Callable]] = {}
    if "torch" in engines:
        out["torch", "fp32"] = {"whole": model, "encoder": model.encoder}
    wanted = [e for e in engines if e != "torch"]
    if not wanted:
        return out
    try:
        whole = export_onnx(model, folder / "model.onnx", image_size=size)
        encoder = _export_encoder(model, folder / "encoder.onnx", size)
    except Exception as exc:  # onnx/onnxscript missing: say so, time the rest
        skipped.update({e: f"export failed: {exc}"[:200] for e in wanted})
        return out
    for engine in wanted:
        try:
            if engine == "onnxruntime":
                for spin in ort_spins:
                    label = engine if spin == "off" else f"{engine} spin={spin}"
                    out[label, "fp32"] = {
                        "whole": OnnxRuntimeEngine(whole, spin=spin),
                        "encoder": _RawOrt(encoder, spin=spin),
                    }
            else:
                xml_w = export_openvino(whole, folder / "ov" / "model.xml")
                xml_e = export_openvino(encoder, folder / "ov" / "encoder.xml")
                for precision in ov_precisions:
                    out[engine, precision] = {
                        "whole": OpenVinoEngine(xml_w, precision=precision),
                        "encoder": _RawOv(xml_e, precision),
                    }
        except Exception as exc:
            skipped[engine] = str(exc)[:200]
    return out


@torch.inference_mode()
def profile_parts(model: PRN, x: torch.Tensor, device: torch.device, warmup: int, repeats: int) -> dict[str, float]:
    """Median ms of each of the model's stages (``PRN.staged``) on ``x``."""
    times: dict[str, list[float]] = {p: [] for p in PARTS}

    def timed(part: str, fn: Callable, *args):
        _sync(device)
        start = time.perf_counter()
        result = fn(*args)
        _sync(device)
        times[part].append((time.perf_counter() - start) * 1000)
        return result

    out = None
    for _ in range(warmup + repeats):
        out = model.staged(x, timed)
    torch.testing.assert_close(out.logits, model(x).logits)  # the stages are the model
    return {p: round(statistics.median(t[warmup:]), 3) for p, t in times.items()}


PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


class CudaGraphRunner:
    """``model`` captured once as a CUDA graph for a fixed input shape: replay copies the input into a static
    buffer and re-launches every kernel at once, without per-op Python or launch overhead (batch-1 latency)."""

    def __init__(self, model: PRN, example: torch.Tensor, dtype: torch.dtype | None) -> None:
        self.model, self.dtype = model, dtype
        self.static_in = example.clone()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), torch.inference_mode():
            for _ in range(3):  # warm-up on a side stream, as capture requires
                self._forward(self.static_in)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), torch.inference_mode():
            self.static_out = self._forward(self.static_in)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cuda", dtype=self.dtype, enabled=self.dtype is not None):
            return self.model(x).logits

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.static_in.copy_(x)
        self.graph.replay()
        return self.static_out


def _autocast(model: PRN, dtype: torch.dtype | None, device: torch.device) -> Callable:
    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            return model(x).logits

    return run


def gpu_rows(model: PRN, size: int, device: torch.device, args: argparse.Namespace) -> list[dict]:
    """Batch-1 latency and large-batch throughput per precision, eager and CUDA-graph, with the largest map
    difference to float32 eager (the tolerance the reduced precisions keep)."""
    rows = []
    probe = torch.rand(4, 3, size, size, device=device)
    with torch.inference_mode():
        reference = torch.sigmoid(model(probe).logits)
    for precision in args.precisions:
        dtype = PRECISIONS[precision]
        with torch.inference_mode():
            diff = (torch.sigmoid(_autocast(model, dtype, device)(probe).float()) - reference).abs().max()
        for batch in (1, args.throughput_batch):
            x = torch.rand(batch, 3, size, size, device=device)
            modes = {"eager": _autocast(model, dtype, device)}
            if device.type == "cuda":
                modes["cuda graph"] = CudaGraphRunner(model, x, dtype)
            for mode, fn in modes.items():
                ms = statistics.median(time_ms(fn, x, device, warmup=args.warmup, repeats=args.repeats))
                row = {"engine": f"torch {mode}", "precision": precision, "part": "whole", "batch": batch}
                row |= {"ms_per_call": round(ms, 4), "ms_per_image": round(ms / batch, 4)}
                row |= {"images_per_s": round(1000 * batch / ms, 1), "max_map_diff_vs_fp32": float(diff)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


def add_openvino_precisions(p: argparse.ArgumentParser) -> None:
    """The ``--openvino-precisions`` option of the speed and engine benchmarks."""
    p.add_argument(
        "--openvino-precisions",
        nargs="+",
        default=["fp32", "bf16"],
        choices=list(ENGINE_PRECISIONS["openvino"]),
        help="OpenVINO CPU precisions to run (default fp32 bf16)",
    )


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--run",
        nargs="+",
        help="trained run folder(s) (default: a random head on --config's encoder); several are timed in the same "
        "rounds, each engine of each run in a process of its own",
    )
    p.add_argument("--config", help="YAML config for the random-head model (default: the defaults)")
    p.add_argument("--prototypes", type=int, default=21, help="prototypes per scale of the random model")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="config override for the random model"
    )
    p.add_argument("--engines", nargs="+", default=list(ENGINES), choices=list(ENGINES))
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--repeats", type=int, default=100)
    p.add_argument("--results", default=str(RESULTS))
    p.add_argument("--name", default="speed", help="results file stem (default speed)")
    p.add_argument("--precisions", nargs="+", default=["fp32", "fp16", "bf16"], choices=list(PRECISIONS))
    add_openvino_precisions(p)
    p.add_argument(
        "--ort-spin",
        nargs="+",
        default=["off", "run"],
        choices=list(SPIN_MODES),
        help="ONNX Runtime thread spinning modes to time: off (the default engine) and run (spinning within a "
        "run only); default both",
    )
    p.add_argument("--throughput-batch", type=int, default=256, help="large batch for GPU throughput")
    p.add_argument("--no-isolate", dest="isolate", action="store_false", help="time every engine in this process")
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="rounds of --repeats calls per cell, every cell (and engine process) in turn each round; the rows give "
        "the median over rounds of each round's median, and the rounds' range (default 1)",
    )
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)  # an isolated engine's own process
    args = p.parse_args(argv)
    if args.run and len(args.run) > 1 and not args.serve and (not args.isolate or args.device != "cpu"):
        p.error("several --run are compared on the CPU, each engine of each run in a process of its own")
    return args


def load_model(args: argparse.Namespace, run: str | None) -> tuple[PRN, int, str, str]:
    """The model to time: ``run``'s (as trained), or a random head on ``args.config``; its input size, a
    description of its source, and its backbone."""
    if run:
        detector = prnad.load(run, device="cpu")
        return detector.model, detector.image_size, run, detector.config.model.encoder.backbone
    model, size = random_model(args.config, args.prototypes, args.set)
    sets = "".join(f", {item}" for item in args.set)
    backbone = build_config(load_yaml(args.config) if args.config else {}).model.encoder.backbone
    return model, size, f"random head ({args.config or 'defaults'}{sets})", backbone


@dataclass
class Cell:
    """One timed cell: ``fn`` (an engine's whole model or encoder) on ``x``, one batch, on ``device``."""

    engine: str
    precision: str
    part: str
    batch: int
    fn: Callable
    x: torch.Tensor
    device: torch.device
    map_diff: str | None = None  # a reduced precision's largest map difference to float32 PyTorch

    def key(self) -> dict:
        out = {"engine": self.engine, "precision": self.precision, "part": self.part, "batch": self.batch}
        return out | ({"max_map_diff_vs_fp32": self.map_diff} if self.map_diff else {})


def build_cells(
    model: PRN, size: int, engines: list[str], device: torch.device, args, folder: Path
) -> tuple[list[Cell], dict[str, str]]:
    """Cells for every (engine, precision), batch and part, warmed up by ``args.warmup`` untimed calls each;
    and the skipped engines."""
    skipped: dict[str, str] = {}
    found = runners(model.cpu(), size, engines, folder, skipped, tuple(args.openvino_precisions), tuple(args.ort_spin))
    model.to(device)
    cells = []
    for (engine, precision), parts in found.items():
        target = device if engine == "torch" else torch.device("cpu")
        if engine == "torch":
            parts = {k: v.to(target) for k, v in parts.items()}
        for batch in args.batches:
            x = torch.rand(batch, 3, size, size, device=target)
            for part, fn in parts.items():
                diff = None
                if precision != "fp32" and part == "whole":
                    diff = f"{reduced_map_diff(model, fn, x):.2e}"
                cells.append(Cell(engine, precision, part, batch, fn, x, target, diff))
    for cell in cells:
        time_ms(cell.fn, cell.x, cell.device, warmup=args.warmup, repeats=0)
    return cells, skipped


def time_round(cells: list[Cell], repeats: int) -> list[float]:
    """One round: per cell, the median ms of ``repeats`` calls after one untimed call (caches refilled after
    whatever ran before)."""
    return [statistics.median(time_ms(c.fn, c.x, c.device, warmup=1, repeats=repeats)) for c in cells]


def row(key: dict, round_medians: list[float]) -> dict:
    """A results row: the median over rounds of each round's median ms per call, and the rounds' range."""
    ms = statistics.median(round_medians)
    out = dict(key, ms_per_call=round(ms, 3), ms_per_image=round(ms / key["batch"], 3))
    if len(round_medians) > 1:
        out |= {"round_min_ms": round(min(round_medians), 3), "round_max_ms": round(max(round_medians), 3)}
        out["round_medians_ms"] = [round(m, 3) for m in round_medians]
    return out


def local_rows(model: PRN, size: int, engines: list[str], device: torch.device, args) -> tuple[list[dict], dict]:
    """Rows of every engine's cells timed in this process, ``args.rounds`` rounds over all cells in turn; and the
    skipped engines."""
    with tempfile.TemporaryDirectory() as tmp:
        cells, skipped = build_cells(model, size, engines, device, args, Path(tmp))
        rounds = [time_round(cells, args.repeats) for _ in range(args.rounds)]
    return [row(c.key(), [r[i] for r in rounds]) for i, c in enumerate(cells)], skipped


PROTOCOL = "@speed "  # prefix of the lines a serving child writes for its parent (other output is ignored)


def _say(payload: object) -> None:
    print(PROTOCOL + json.dumps(payload), flush=True)


def _hear(child: subprocess.Popen) -> object:
    for line in child.stdout:
        if line.startswith(PROTOCOL):
            return json.loads(line[len(PROTOCOL) :])
    raise RuntimeError(f"speed.py child {child.args[-3:]} ended (exit {child.wait()}) before answering")


def serve(model: PRN, size: int, engines: list[str], device: torch.device, args) -> None:
    """A child's loop: build and warm up this engine's cells, say their keys, then time one round per
    ``round`` line read from stdin and say the medians, until stdin closes (or another line comes)."""
    with tempfile.TemporaryDirectory() as tmp:
        cells, skipped = build_cells(model, size, engines, device, args, Path(tmp))
        _say({"keys": [c.key() for c in cells], "skipped": skipped})
        for line in sys.stdin:
            if line.strip() != "round":
                break
            _say(time_round(cells, args.repeats))


def isolated_rows(
    argv: list[str], engines: list[str], rounds: int, runs: list[str] | None = None
) -> tuple[list[dict], dict[str, str]]:
    """Each engine (of each of ``runs``, or of the model ``argv`` names) timed in a process of its own, the
    processes taking turns: ``rounds`` rounds, each round timing every process once, one at a time, starting
    with a different one each round (a slow spell of the machine then falls on every engine alike). Rows in
    ``runs`` then ``engines`` order, each naming its run when there are several; skipped engines."""
    jobs = [(run, e) for run in (runs or [None]) for e in engines]
    children, hello = [], []
    try:
        for run, engine in jobs:  # one at a time: an engine's export does not overlap another's timing
            cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--engines", engine, "--no-isolate", "--serve"]
            cmd += ["--run", run] if run else []  # a later --run replaces the list given before
            children.append(subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
            hello.append(_hear(children[-1]))
            if runs and len(runs) > 1:
                hello[-1]["keys"] = [{"model": run, **k} for k in hello[-1]["keys"]]
        medians: list[list[list[float]]] = [[] for _ in jobs]  # per process, per round, per cell
        for r in range(rounds):
            for i in [(r + j) % len(jobs) for j in range(len(jobs))]:
                children[i].stdin.write("round\n")
                children[i].stdin.flush()
                medians[i].append(_hear(children[i]))
                time.sleep(PAUSE_S)
    finally:
        for child in children:
            if child.poll() is None:
                child.stdin.close()
                child.wait()
    rows = [row(k, [m[c] for m in medians[i]]) for i, h in enumerate(hello) for c, k in enumerate(h["keys"])]
    skipped = {e: why for h in hello for e, why in h["skipped"].items()}
    return rows, skipped


def main(argv: list[str] | None = None) -> dict:
    args = _args(argv)
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    runs = args.run or [None]
    model, size, source, backbone = load_model(args, runs[0])
    model = model.to(device).eval()
    engines = [e for e in args.engines if e == "torch" or device.type == "cpu"]
    if args.serve:
        serve(model, size, engines, device, args)
        return {}
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(runs) > 1:
        rows, skipped = isolated_rows(argv, engines, args.rounds, runs)
    elif args.isolate and len(engines) > 1:
        rows, skipped = isolated_rows(argv, engines, args.rounds)
    else:
        rows, skipped = local_rows(model, size, engines, device, args)
    for r in rows:
        print(json.dumps({k: v for k, v in r.items() if k != "round_medians_ms"}), flush=True)
    if device.type == "cuda":
        rows += gpu_rows(model, size, device, args)
    profiles = {}
    for run in runs:  # the PyTorch model's parts, one model at a time
        if run != runs[0]:
            model, size, _, _ = load_model(args, run)
        x = torch.rand(1, 3, size, size, device=device)
        profiles[run or source] = profile_parts(model.to(device).eval(), x, device, args.warmup, args.repeats)
    data = {
        "device": device_name(device),
        "threads": args.threads,
        "machine": platform.node(),
        "date": dt.date.today().isoformat(),
        "torch": torch.__version__,
        "model": ", ".join(profiles),
        "backbone": backbone,
        "image_size": size,
        "command": "python benchmarks/speed.py " + " ".join(argv),
        "rows": rows,
        "skipped": skipped,
        "profile_torch_b1_ms": next(iter(profiles.values())) if len(runs) == 1 else profiles,
        "engines_isolated": bool(len(runs) > 1 or (args.isolate and len(engines) > 1)),
        "rounds": args.rounds,
        "repeats": args.repeats,
    }
    write(Path(args.results), args.name, data)
    return data


def write(folder: Path, name: str, data: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
    rounds = data.get("rounds", 1)
    how = (
        f"Median over {rounds} rounds of each round's median wall time per call ({data['repeats']} calls a round, "
        "every cell in turn each round; the last column gives the rounds' range)"
        if rounds > 1
        else "Median wall time per call"
    )
    several = any("model" in r for r in data["rows"])  # rows of several runs, each naming its model
    lines = [
        f"# Inference speed ({data['device']}, {data['threads']} threads, {data['date']})",
        "",
        f"Model{'s' if several else ''}: {data['model']} ({data['backbone']}, {data['image_size']} px). "
        f"torch {data['torch']}.",
        f"Command: `{data['command']}`",
        "",
        f"{how} after warm-up, input a float tensor (no decoding); ms per image = per call / batch."
        + (" Each engine timed in a process of its own." if data.get("engines_isolated") else ""),
        "",
        ("| model " if several else "")
        + "| engine | precision | part | batch | ms per call | ms per image | images/s | max map diff to fp32 |"
        + (" rounds' range, ms per call |" if rounds > 1 else ""),
        ("|---" if several else "") + "|---|---|---|---|---|---|---|---|" + ("---|" if rounds > 1 else ""),
    ]
    for r in data["rows"]:
        spread = f" {r['round_min_ms']:.3f} - {r['round_max_ms']:.3f} |" if "round_min_ms" in r else ""
        lines.append(
            (f"| {r['model']} " if several else "")
            + f"| {r['engine']} | {r.get('precision', 'fp32')} | {r['part']} | {r['batch']} | {r['ms_per_call']:.3f} | "
            f"{r['ms_per_image']:.3f} | {1000 * r['batch'] / r['ms_per_call']:.0f} | "
            f"{r.get('max_map_diff_vs_fp32', '')} |" + spread
        )
    lines += [f"| {e} | | skipped: {why} | | | | | |" for e, why in data["skipped"].items()]
    profiles = data["profile_torch_b1_ms"] if several else {data["model"]: data["profile_torch_b1_ms"]}
    lines += ["", "Per-part profile, PyTorch eager, batch 1, ms (medians; their sum need not equal the whole):", ""]
    lines += ["| part | " + " | ".join(profiles) + " |", "|---|" + "---|" * len(profiles)]
    lines += [f"| {p} | " + " | ".join(f"{t[p]:.2f}" for t in profiles.values()) + " |" for p in PARTS]
    lines += ["| sum | " + " | ".join(f"{sum(t.values()):.2f}" for t in profiles.values()) + " |"]
    (folder / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
