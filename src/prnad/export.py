"""Export of the whole PRN into one graph (ONNX, OpenVINO IR) and the engines that run it.

The graph takes RGB images (B, 3, S, S) float32 in [0, 1], B dynamic, and holds everything: input
normalisation, encoder, prototype matching, both MF1 blocks, MSA, MF2, decoder and the top-K image score.
Outputs: ``logits`` (B, 1, S, S), ``anomaly_map`` = sigmoid(logits) (B, 1, S, S) and ``score`` (B,), the
mean of the top-K pixels of the map in float32 (PyTorch computes it in float64; the two agree to ~1e-7
below the float32 saturation of the sigmoid). An engine returns the same :class:`~prnad.model.prn.PRNOutput`
as the PyTorch model, so that :class:`prnad.Detector` predicts and evaluates through one path.

Export files live in the run folder, under ``export/``, beside a JSON record of the model file they came
from (its SHA-256): an engine whose export is missing or stale re-exports first.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import queue
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from prnad.data import file_sha256
from prnad.errors import CheckpointError, ConfigError, DataError, ExportError, PrnadError
from prnad.model import PRN
from prnad.model.prn import PRNOutput, topk_score

Format = Literal["onnx", "openvino"]
ENGINES = ("torch", "onnxruntime", "openvino")
# The precisions each engine runs: the PyTorch module under autocast; OpenVINO's CPU plugin in bfloat16 where the
# processor has it (AVX512-BF16, AMX); ONNX Runtime float32 only.
OPENVINO_HINTS = {"fp32": "f32", "bf16": "bf16"}  # precision -> the CPU plugin's INFERENCE_PRECISION_HINT
ENGINE_PRECISIONS = {"torch": ("fp32", "fp16", "bf16"), "onnxruntime": ("fp32",), "openvino": tuple(OPENVINO_HINTS)}
OPSET = 18
# What the exported graph computes beyond the weights; a cached export made with another is made again.
# 2: the patch match blends the two nearest bank vectors at near-ties (continuous across them).
# 3: bilinear upsampling to the image size as matmuls; the top-K score takes the sigmoid of the top-K logits.
GRAPH_VERSION = 3
INPUT, OUTPUTS = "images", ("logits", "anomaly_map", "score")


class ExportGraph(nn.Module):
    """PRN as a graph with tensor outputs: images (B, 3, S, S) -> logits, anomaly_map (B, 1, S, S), score (B,)."""

    def __init__(self, model: PRN) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits, maps = self.model.decode(images)  # the decoder's (B, 1, S, S); float32 throughout
        score = topk_score(logits, self.model.topk, smoothing=self.model.score_smoothing, dtype=torch.float32)  # (B,)
        if maps is None:
            return logits, torch.sigmoid(logits), score
        fused = self.model.fused_logits(logits, maps)
        score = self.model.combined_score(score, self.model.largest_distances(maps))  # (B,) float32
        return fused, torch.sigmoid(fused), score


def _modes(model: nn.Module) -> dict[str, bool]:
    return {name: m.training for name, m in model.named_modules()}


@contextlib.contextmanager
def _modes_kept(model: nn.Module):
    """Restore every submodule's own train/eval mode afterwards: ``torch.onnx.export`` resets the whole tree
    to the top module's mode, which would switch a frozen encoder's BatchNorm to batch statistics."""
    before = _modes(model)
    try:
        yield
    finally:
        for name, module in model.named_modules():
            module.training = before[name]


def export_onnx(model: PRN, path: str | Path, *, image_size: int) -> Path:
    """Write ``model`` as one ONNX graph with a dynamic batch, traced in eval mode; every submodule's own
    mode is restored afterwards, and the model's outputs are unchanged by the export."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.rand(2, 3, image_size, image_size)
    batch = torch.export.Dim("batch", min=1, max=1024)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.onnx")
    with _modes_kept(model), torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
        graph = ExportGraph(model).eval()  # eval for the export only: the caller's modes come back after
        program = torch.onnx.export(
            graph,
            (example,),
            dynamo=True,
            input_names=[INPUT],
            output_names=list(OUTPUTS),
            dynamic_shapes={"images": {0: batch}},
            opset_version=OPSET,
            external_data=False,
        )
        program.save(str(tmp), external_data=False)
    os.replace(tmp, path)
    return path


def export_openvino(onnx_path: str | Path, xml_path: str | Path) -> Path:
    """Convert an exported ONNX graph into OpenVINO IR (model.xml + model.bin), weights kept in float32."""
    ov = _import("openvino", "openvino")
    xml_path = Path(xml_path)
    xml_path.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(ov.convert_model(str(onnx_path)), str(xml_path), compress_to_fp16=False)
    return xml_path


def _import(module: str, package: str) -> Any:
    try:
        return __import__(module)
    except ImportError as exc:
        raise ConfigError(f"{module} is not installed: pip install 'prnad[deploy]' (or {package})") from exc


def _same_source(record: dict, model_sha256: str) -> bool:
    """Whether an export ``record`` was made from the model file with this SHA-256 by this graph version."""
    return record.get("model_sha256") == model_sha256 and record.get("graph_version") == GRAPH_VERSION


class ExportPaths:
    """Where a run's exports live: ``<run>/export/model.onnx``, ``<run>/export/openvino/model.xml``."""

    def __init__(self, run_dir: Path) -> None:
        self.root = run_dir / "export"
        self.onnx = self.root / "model.onnx"
        self.openvino = self.root / "openvino" / "model.xml"
        self.record = self.root / "export.json"

    def target(self, fmt: Format) -> Path:
        return self.onnx if fmt == "onnx" else self.openvino

    def fresh(self, fmt: Format, model_sha256: str) -> bool:
        """True when the ``fmt`` export exists and was made from the model file with this SHA-256 by a prnad
        whose graph is this one's (``GRAPH_VERSION``)."""
        if not (self.target(fmt).is_file() and self.record.is_file()):
            return False
        try:
            record = json.loads(self.record.read_text())
        except (OSError, json.JSONDecodeError):
            return False
        return _same_source(record, model_sha256) and fmt in record.get("formats", [])

    def write_record(self, fmt: Format, model_sha256: str) -> None:
        record = {"model_sha256": model_sha256, "graph_version": GRAPH_VERSION, "formats": []}
        if self.record.is_file():
            with contextlib.suppress(OSError, json.JSONDecodeError):
                old = json.loads(self.record.read_text())
                if _same_source(old, model_sha256):
                    record = old
        record["formats"] = sorted({*record["formats"], fmt, "onnx"})
        record.update(opset=OPSET, inputs={INPUT: "(B, 3, S, S) float32 RGB in [0, 1]"}, outputs=list(OUTPUTS))
        self.record.write_text(json.dumps(record, indent=2))


def export_run(model: PRN, run_dir: Path, model_file: Path, fmt: Format, *, image_size: int) -> Path:
    """Export a run's model as ``fmt`` into ``<run>/export/`` (ONNX first: OpenVINO is converted from it)."""
    if fmt not in ("onnx", "openvino"):
        raise ConfigError(f"export format must be onnx or openvino, got {fmt!r}")
    paths, sha = ExportPaths(run_dir), file_sha256(model_file)
    try:
        if not paths.fresh("onnx", sha):
            _import("onnx", "onnx")
            _import("onnxscript", "onnxscript")  # torch's ONNX exporter needs it, and says so only in a traceback
            _stage("ONNX export", paths.onnx, lambda: export_onnx(model, paths.onnx, image_size=image_size))
        if fmt == "openvino" and not paths.fresh("openvino", sha):
            _import("openvino", "openvino")
            _stage("OpenVINO conversion", paths.openvino, lambda: export_openvino(paths.onnx, paths.openvino))
        paths.write_record(fmt, sha)
    except OSError as exc:
        raise DataError(f"{paths.root}: cannot write the export ({exc.strerror or exc})") from exc
    return paths.target(fmt)


def _stage(what: str, target: Path, work: Callable[[], Path]) -> Path:
    """Run one export stage; a failure inside the exporter or converter (their own exception types) becomes one
    ExportError naming the stage and the file it was writing. OSError (a disk or folder problem) passes."""
    try:
        return work()
    except (OSError, PrnadError):
        raise
    except Exception as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"{target}: {what} failed ({type(exc).__name__}: {detail})") from exc


# ------------------------------------------------------------------------------------------------- engines


def _output(logits: np.ndarray, amap: np.ndarray, score: np.ndarray) -> PRNOutput:
    """An engine's outputs as :class:`PRNOutput`; the graph has no separate decoder map (only training needs it)."""
    reported = torch.from_numpy(np.ascontiguousarray(logits))
    return PRNOutput(
        logits=reported,
        anomaly_map=torch.from_numpy(np.ascontiguousarray(amap)),
        score=torch.from_numpy(np.ascontiguousarray(score)).double(),
        decoder_logits=reported,
    )


SPIN_MODES = ("off", "run")


def check_spin(engine: str, spin: str) -> None:
    """A clear error unless ``spin`` is a spin mode, and ``off`` for every engine but ONNX Runtime."""
    if spin not in SPIN_MODES:
        raise ConfigError(f"spin must be one of {', '.join(SPIN_MODES)}, got {spin!r}")
    if spin != "off" and engine != "onnxruntime":
        raise ConfigError(f"spin {spin!r} is an ONNX Runtime setting; engine {engine!r} takes spin='off'")


def onnxruntime_options(threads: int | None = None, spin: str = "off") -> Any:
    """The engine's ONNX Runtime session options: ``threads`` intra-op threads (default: torch's), one
    inter-op thread, every graph optimisation, and thread spinning ``off`` (a worker thread sleeps whenever
    it waits, and is woken for each parallel operator) or only while a ``run`` is in progress (workers
    spin between the operators of one run and stop as the run returns: no core is taken between runs)."""
    check_spin("onnxruntime", spin)
    ort = _import("onnxruntime", "onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin == "run" else "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    if spin == "run":
        options.add_session_config_entry("session.force_spinning_stop", "1")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return options


class OnnxRuntimeEngine:
    """An exported graph run by ONNX Runtime on the CPU; called like the PRN module, returns a PRNOutput.

    Thread spinning ``off`` by default (a spinning thread would steal the cores of the image reading and of
    any other process); ``spin="run"`` lets the workers spin between the operators of one run only, which
    saves their wake-ups (about a tenth of the batch-1 time on two cores) and takes no core between runs.
    """

    name = "onnxruntime"

    def __init__(self, path: Path, *, threads: int | None = None, spin: str = "off") -> None:
        ort = _import("onnxruntime", "onnxruntime")
        options = onnxruntime_options(threads, spin)
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own exception types for a corrupt file
            raise CheckpointError(f"{path}: ONNX Runtime cannot load it ({exc}); delete it to export again") from exc

    def eval(self) -> OnnxRuntimeEngine:
        return self

    def __call__(self, images: torch.Tensor) -> PRNOutput:
        outputs = self.session.run(list(OUTPUTS), {INPUT: images.detach().cpu().float().numpy()})
        return _output(*outputs)


def compile_openvino(path: Path, *, threads: int | None = None, precision: str = "fp32") -> Any:
    """An OpenVINO IR compiled for the CPU in ``precision`` (fp32, or bf16: matmuls and convolutions in
    bfloat16 where the processor has it), latency mode, on ``threads`` (default: torch's)."""
    if precision not in OPENVINO_HINTS:
        raise ConfigError(f"OpenVINO precision must be one of {', '.join(OPENVINO_HINTS)}, got {precision!r}")
    ov = _import("openvino", "openvino")
    config = {
        "INFERENCE_PRECISION_HINT": OPENVINO_HINTS[precision],
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_NUM_THREADS": threads or torch.get_num_threads(),
    }
    try:
        return ov.Core().compile_model(str(path), "CPU", config)
    except Exception as exc:  # OpenVINO raises RuntimeError with its own message for a corrupt file
        raise CheckpointError(f"{path}: OpenVINO cannot load it ({exc}); delete it to export again") from exc


class OpenVinoEngine:
    """OpenVINO IR run on the CPU, pinned to ``precision``: float32 by default (the CPU plugin would otherwise
    pick bf16 where the processor has it), or bf16 when asked; returns a PRNOutput."""

    def __init__(self, path: Path, *, threads: int | None = None, precision: str = "fp32") -> None:
        self.name = "openvino" if precision == "fp32" else f"openvino {precision}"
        self.compiled = compile_openvino(path, threads=threads, precision=precision)
        self.outputs = [self.compiled.output(name) for name in OUTPUTS]
        self._idle: queue.SimpleQueue = queue.SimpleQueue()  # requests no caller holds
        self._idle.put(self.compiled.create_infer_request())

    def eval(self) -> OpenVinoEngine:
        return self

    def _request(self) -> Any:
        """An inference request no other caller holds: an idle one, or a new one when every one is busy."""
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            return self.compiled.create_infer_request()

    def __call__(self, images: torch.Tensor) -> PRNOutput:
        """Thread-safe: each call runs on a request of its own (a request's input and output tensors are its
        state), taken from a pool that grows to the number of concurrent callers."""
        request = self._request()
        try:
            result = request.infer({INPUT: images.detach().cpu().float().numpy()})
            outputs = [np.array(result[o]) for o in self.outputs]  # copies: the request's buffers are reused
        finally:
            self._idle.put(request)
        return _output(*outputs)


def check_engine_precision(engine: str, precision: str) -> None:
    """ConfigError unless ``engine`` is known and runs ``precision`` (:data:`ENGINE_PRECISIONS`)."""
    if engine not in ENGINES:
        raise ConfigError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if precision not in ENGINE_PRECISIONS[engine]:
        raise ConfigError(
            f"precision {precision!r} is not one engine {engine!r} runs: {', '.join(ENGINE_PRECISIONS[engine])}"
        )


def load_engine(
    engine: str,
    model: PRN,
    run_dir: Path | None,
    model_file: Path | None,
    image_size: int,
    precision: str = "fp32",
    spin: str = "off",
):
    """The callable that runs ``model``: the module itself for ``torch`` (its precision is the caller's
    business), else its export (made if needed), run by ONNX Runtime (threads spinning as ``spin`` says) or
    by OpenVINO in ``precision``."""
    check_engine_precision(engine, precision)
    check_spin(engine, spin)
    if engine == "torch":
        return model
    if run_dir is None or model_file is None:
        raise ConfigError(f"engine {engine!r} runs a run folder's export: load the model with prnad.load(run)")
    fmt: Format = "onnx" if engine == "onnxruntime" else "openvino"
    path = export_run(model, run_dir, model_file, fmt, image_size=image_size)
    return OnnxRuntimeEngine(path, spin=spin) if engine == "onnxruntime" else OpenVinoEngine(path, precision=precision)
