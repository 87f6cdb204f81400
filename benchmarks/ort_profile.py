"""Benchmark: where ONNX Runtime (or OpenVINO) spends the whole PRN's time, per model part and operator, batch 1.

    python benchmarks/ort_profile.py --run runs/bench_bottle/seed0
    python benchmarks/ort_profile.py --config configs/mobilenet_v2_tf.yaml   # random head, the config's encoder weights
    python benchmarks/ort_profile.py --run runs/bench_bottle/seed0 --engine openvino --name ov_profile

``benchmarks/speed.py`` profiles the PyTorch model part by part; the fastest engine runs an optimised graph
whose costs differ (fused convolutions, other matmul kernels). This exports the model as ``prnad export``
does, runs it ``--repeats`` times at batch 1 after ``--warmup`` calls in an ONNX Runtime session with
profiling on (the engine's own settings: spinning off, ``--threads`` threads), and sums each node's kernel time
per call. A node is put under the model part its operators came from (the exporter's module scope:
``encoder``, ``feature_fusion``, ``attention``, ...; nodes of PRN's own forward, such as the patch match and the
score banks' distances, have no submodule and count as ``PRN (matching, banks, fusion, score)``; nodes that
ONNX Runtime's optimiser made or renamed have no scope and are counted apart), and under its operator type.
Kernel times leave out the session's own overhead, so their sum is below the wall time, which is reported
beside it. ``--engine openvino`` compiles the same ONNX graph as the OpenVINO engine does (float32, latency
mode, ``--threads`` threads) with its per-node performance counters on; OpenVINO keeps the ONNX node names on
the nodes it fuses them into, so they fall under the same parts (its operator names are its own:
``FullyConnected`` for a MatMul, ``Interpolate`` for a Resize). Writes ``<results>/<name>.json`` and ``.md``; prints what it measured.
"""

from __future__ import annotations

import argparse
import ast
import collections
import datetime as dt
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

import prnad
from prnad.export import export_onnx, onnxruntime_options
from prnad.utils import device_name
from speed import random_model  # alongside this file

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
OWN = "PRN (matching, banks, fusion, score)"
RENAMED = "nodes the engine made (layout reorders, fusions it names anew)"
ENGINE_TITLES = {"onnxruntime": "ONNX Runtime", "openvino": "OpenVINO (float32)"}


def node_parts(onnx_path: Path) -> dict[str, str]:
    """Node name -> the top-level PRN submodule it was exported from (its scope), or OWN for PRN's own code."""
    import onnx

    parts = {}
    for node in onnx.load(str(onnx_path)).graph.node:
        meta = {p.key: p.value for p in node.metadata_props}
        # e.g. "['', 'model.encoder', 'model.encoder.stages.0', 'conv2d']": the top module, the submodules, the op
        scopes = ast.literal_eval(meta.get("pkg.torch.onnx.name_scopes", "[]"))
        modules = scopes[1:-1]
        part = modules[0].removeprefix("model.").split(".")[0] if modules else OWN
        for name in (node.name, *node.output):  # ONNX Runtime names some nodes it makes after an output
            parts.setdefault(name, part)
    return parts


def part_of(node: str, parts: dict[str, str]) -> str:
    """The part of a node of ONNX Runtime's optimised graph: its own name, or the name of the node it was made
    from ("node_matmul/MatMulScaleFusion/" from "node_matmul", "relu_1_nchwc" from "node_relu_1")."""
    base = node.split("/")[0].removesuffix("_nchwc")
    for name in (node, base, f"node_{base}"):
        if name in parts:
            return parts[name]
    return RENAMED


def profile(onnx_path: Path, size: int, *, threads: int, warmup: int, repeats: int, folder: Path) -> dict:
    """Per-call wall time and kernel time per node (ms), from a profiled ONNX Runtime session."""
    import onnxruntime as ort

    options = onnxruntime_options(threads)  # the engine's own settings
    options.enable_profiling = True
    options.profile_file_prefix = str(folder / "ort")
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((1, 3, size, size), dtype=np.float32)
    for _ in range(warmup):
        session.run(None, {"images": x})
    wall = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, {"images": x})
        wall.append(1000 * (time.perf_counter() - start))
    events = json.loads(Path(session.end_profiling()).read_text())
    runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    nodes: dict[str, float] = collections.defaultdict(float)
    ops: dict[str, str] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            name = e["name"].removesuffix("_kernel_time")
            nodes[name] += e["dur"] / 1000  # microseconds -> ms
            ops[name] = e.get("args", {}).get("op_name", "?")
    calls = len(runs)  # warm-up calls are profiled too: per-call figures divide by every call
    return {
        "wall_ms_median": statistics.median(wall),
        "calls_profiled": calls,
        "nodes": {n: {"ms": ms / calls, "op": ops[n]} for n, ms in nodes.items()},
    }


def profile_openvino(onnx_path: Path, size: int, *, threads: int, warmup: int, repeats: int) -> dict:
    """Per-call wall time and time per node (ms) from OpenVINO's performance counters, float32 as the engine."""
    import openvino as ov

    config = {
        "INFERENCE_PRECISION_HINT": "f32",
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_NUM_THREADS": threads,
        "PERF_COUNT": True,
    }
    request = ov.Core().compile_model(str(onnx_path), "CPU", config).create_infer_request()
    x = np.random.default_rng(0).random((1, 3, size, size), dtype=np.float32)
    for _ in range(warmup):
        request.infer({"images": x})
    wall, nodes, ops = [], collections.defaultdict(float), {}
    for _ in range(repeats):
        start = time.perf_counter()
        request.infer({"images": x})
        wall.append(1000 * (time.perf_counter() - start))
        for info in request.get_profiling_info():  # this call's counters, one entry per executed node
            nodes[info.node_name] += info.real_time.total_seconds() * 1000
            ops[info.node_name] = info.node_type
    return {
        "wall_ms_median": statistics.median(wall),
        "calls_profiled": repeats,
        "nodes": {n: {"ms": ms / repeats, "op": ops[n]} for n, ms in nodes.items() if ms > 0},
    }


def _grouped(nodes: dict, key: Callable[[str, dict], str]) -> dict[str, float]:
    """Per-call ms summed by ``key(node name, node)``, largest first."""
    out: dict[str, float] = collections.defaultdict(float)
    for name, n in nodes.items():
        out[key(name, n)] += n["ms"]
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", help="trained run folder (default: a random head on --config's encoder)")
    p.add_argument("--config", help="YAML config for the random-head model (default: the defaults)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (random model)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--top", type=int, default=15, help="slowest nodes listed")
    p.add_argument("--results", default=str(RESULTS))
    p.add_argument("--name", default="ort_profile")
    p.add_argument("--engine", choices=("onnxruntime", "openvino"), default="onnxruntime")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.run:
        detector = prnad.load(args.run, device="cpu")
        model, size, source = detector.model, detector.image_size, args.run
    else:
        model, size = random_model(args.config, 21, args.set)
        source = f"random head ({args.config or 'defaults'}{''.join(', ' + s for s in args.set)})"
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(model.cpu().eval(), Path(tmp) / "model.onnx", image_size=size)
        timing = {"threads": args.threads, "warmup": args.warmup, "repeats": args.repeats}
        if args.engine == "openvino":
            measured = profile_openvino(path, size, **timing)
        else:
            measured = profile(path, size, **timing, folder=Path(tmp))
        parts = node_parts(path)
    nodes = measured["nodes"]
    data = {
        "engine": args.engine,
        "device": device_name(torch.device("cpu")),
        "threads": args.threads,
        "date": dt.date.today().isoformat(),
        "model": source,
        "image_size": size,
        "command": "python benchmarks/ort_profile.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "wall_ms_median": round(measured["wall_ms_median"], 3),
        "kernel_ms": round(sum(n["ms"] for n in nodes.values()), 3),
        "by_part_ms": {k: round(v, 3) for k, v in _grouped(nodes, lambda name, _: part_of(name, parts)).items()},
        "by_op_ms": {k: round(v, 3) for k, v in _grouped(nodes, lambda _, n: n["op"]).items()},
        "slowest_nodes": [
            {"node": n, "op": v["op"], "part": part_of(n, parts), "ms": round(v["ms"], 3)}
            for n, v in sorted(nodes.items(), key=lambda kv: -kv[1]["ms"])[: args.top]
        ],
    }
    write(Path(args.results), args.name, data)
    return data


def write(folder: Path, name: str, data: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
    total = data["kernel_ms"]
    engine = ENGINE_TITLES[data.get("engine", "onnxruntime")]
    lines = [f"# {engine} profile, batch 1 ({data['device']}, {data['threads']} threads, {data['date']})", ""]
    lines += [f"Model: {data['model']} ({data['image_size']} px). Command: `{data['command']}`", ""]
    lines += [
        f"Wall time per call (median): {data['wall_ms_median']:.2f} ms; kernel time per call: {total:.2f} ms.",
        "",
    ]
    for title, key in (("model part", "by_part_ms"), ("operator", "by_op_ms")):
        lines += [f"| {title} | ms per call | share of kernel time |", "|---|---|---|"]
        lines += [f"| {k} | {v:.3f} | {100 * v / total:.0f} % |" for k, v in data[key].items()]
        lines += [""]
    lines += ["Slowest nodes:", "", "| node | operator | part | ms per call |", "|---|---|---|---|"]
    lines += [f"| {n['node']} | {n['op']} | {n['part']} | {n['ms']:.3f} |" for n in data["slowest_nodes"]]
    (folder / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
