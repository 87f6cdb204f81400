"""Export of the whole model into one graph, and the engines that run it (ONNX Runtime, OpenVINO)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import prnad
from prnad.cli import main
from prnad.errors import CheckpointError, ConfigError
from prnad.export import GRAPH_VERSION, OUTPUTS, ExportPaths, export_onnx, onnxruntime_options
from prnad.model.prn import PRN
from tests.conftest import score_tolerance, tiny_overrides


@pytest.fixture(scope="module")
def run(tiny_category: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("export") / "run"
    prnad.train(tiny_category, out, overrides=tiny_overrides(tiny_category))
    prnad.export(out, "openvino")  # ONNX first, then OpenVINO from it
    return out


def _images(tiny_category: Path) -> list[Path]:
    return sorted((tiny_category / "test").rglob("*.png"))


def test_one_graph_with_a_dynamic_batch(run: Path):
    model = onnx.load(str(ExportPaths(run).onnx))
    assert [o.name for o in model.graph.output] == list(OUTPUTS)
    batch = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param and not batch.HasField("dim_value")  # symbolic, not a fixed size
    assert (run / "export" / "openvino" / "model.xml").is_file()
    record = json.loads((run / "export" / "export.json").read_text())
    assert record["formats"] == ["onnx", "openvino"] and len(record["model_sha256"]) == 64


@pytest.mark.parametrize("engine", ["onnxruntime", "openvino"])
def test_engines_give_the_pytorch_maps(run: Path, tiny_category: Path, engine: str):
    reference = prnad.load(run, device="cpu")
    exported = prnad.load(run, device="cpu", engine=engine)
    files = _images(tiny_category)
    for batch_size in (1, 4):
        ours = exported.predict(files, batch_size=batch_size)
        for a, b in zip(reference.predict(files), ours, strict=True):
            assert np.abs(a.anomaly_map - b.anomaly_map).max() < 1e-3
            assert b.score == pytest.approx(a.score, abs=score_tolerance(reference, a.score))
    a, b = reference.evaluate(), exported.evaluate()
    assert b["engine"] == engine and a["engine"] == "torch"
    for key, value in a["metrics"].items():
        assert abs(value - b["metrics"][key]) <= 0.1, key


def test_exporting_leaves_the_pytorch_model_unchanged(run: Path, tmp_path: Path):
    model: PRN = prnad.load(run, device="cpu").model
    model.train()  # a model in training mode, with its frozen encoder in eval mode
    modes = {name: m.training for name, m in model.named_modules()}
    assert not model.encoder.training and model.decoder.training
    x = torch.rand(2, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        before = model(x).logits
    model.train()
    export_onnx(model, tmp_path / "m.onnx", image_size=64)
    assert {name: m.training for name, m in model.named_modules()} == modes
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x).logits, before)


def test_a_stale_export_is_made_again(run: Path, tmp_path: Path):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    paths = ExportPaths(copy)
    record = json.loads(paths.record.read_text())
    paths.record.write_text(json.dumps(record | {"model_sha256": "0" * 64}))
    stamp = paths.onnx.stat().st_mtime_ns
    prnad.load(copy, device="cpu", engine="onnxruntime")
    assert paths.onnx.stat().st_mtime_ns != stamp
    assert json.loads(paths.record.read_text())["model_sha256"] == record["model_sha256"]


def test_an_export_from_an_older_graph_is_made_again(run: Path, tmp_path: Path):
    """The cache follows the code too: a prnad that computes another graph does not reuse the file."""
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    paths = ExportPaths(copy)
    record = json.loads(paths.record.read_text())
    assert record["graph_version"] == GRAPH_VERSION
    paths.record.write_text(json.dumps({k: v for k, v in record.items() if k != "graph_version"}))  # before 2
    stamp = paths.onnx.stat().st_mtime_ns
    prnad.load(copy, device="cpu", engine="onnxruntime")
    assert paths.onnx.stat().st_mtime_ns != stamp
    assert json.loads(paths.record.read_text())["graph_version"] == GRAPH_VERSION


def test_a_corrupt_export_is_a_clear_error(run: Path, tmp_path: Path):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    onnx_file = ExportPaths(copy).onnx
    onnx_file.write_bytes(onnx_file.read_bytes()[:500])
    with pytest.raises(CheckpointError, match="model.onnx"):
        prnad.load(copy, device="cpu", engine="onnxruntime")


def test_onnxruntime_spins_never_by_default_or_within_runs_when_asked(run: Path, tiny_category: Path):
    """spin='off' (default): worker threads never spin; spin='run': they spin within a run and stop as it
    returns. Same maps either way; other engines refuse a spin mode."""
    off, within = onnxruntime_options(1), onnxruntime_options(1, spin="run")
    assert off.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert within.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    assert within.get_session_config_entry("session.force_spinning_stop") == "1"
    files = _images(tiny_category)[:4]
    a = prnad.load(run, device="cpu", engine="onnxruntime").predict(files)
    b = prnad.load(run, device="cpu", engine="onnxruntime", spin="run").predict(files)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x.anomaly_map, y.anomaly_map, atol=1e-6)
    with pytest.raises(ConfigError, match="ONNX Runtime setting"):
        prnad.load(run, device="cpu", engine="openvino", spin="run")
    with pytest.raises(ConfigError, match="spin must be one of"):
        prnad.load(run, device="cpu", engine="onnxruntime", spin="always")


def test_unknown_engine_and_format(run: Path):
    with pytest.raises(ConfigError, match="engine"):
        prnad.load(run, device="cpu", engine="tensorrt")
    with pytest.raises(ConfigError, match="format"):
        prnad.export(run, "tflite")


def test_cli_export_and_predict_with_an_engine(run: Path, tiny_category: Path, tmp_path: Path, capsys):
    assert main(["export", str(run), "--format", "onnx"]) == 0
    assert "model.onnx" in capsys.readouterr().out
    out = tmp_path / "pred"
    folder = str(tiny_category / "test" / "hole")
    assert main(["predict", str(run), folder, "--out", str(out), "--engine", "openvino"]) == 0
    rows = (out / "results.csv").read_text().splitlines()
    assert len(rows) == 1 + 3 and len(list(out.glob("*_overlay.png"))) == 3
    out = tmp_path / "pred_ort"
    assert main(["predict", str(run), folder, "--out", str(out), "--engine", "onnxruntime", "--spin", "run"]) == 0
    assert len((out / "results.csv").read_text().splitlines()) == 1 + 3
    assert main(["predict", str(run), folder, "--out", str(tmp_path / "x"), "--spin", "run"]) == 2  # torch: refused


def test_bf16_autocast_stays_close_to_float32(run: Path, tiny_category: Path):
    reference = prnad.load(run, device="cpu")
    reduced = prnad.load(run, device="cpu", precision="bf16")
    files = _images(tiny_category)[:3]
    for a, b in zip(reference.predict(files), reduced.predict(files), strict=True):
        assert np.abs(a.anomaly_map - b.anomaly_map).max() < 0.05
        assert b.anomaly_map.dtype == np.float32
    with pytest.raises(ConfigError, match="precision"):
        prnad.load(run, device="cpu", engine="onnxruntime", precision="fp16")


def test_openvino_runs_bf16_when_asked_and_refuses_fp16(run: Path, tiny_category: Path):
    """OpenVINO's bf16 hint (bfloat16 matmuls and convolutions where the CPU has them; float32 elsewhere)
    keeps the tiny model's maps close to float32's; fp16 is not a precision OpenVINO's CPU engine is offered
    in. The bf16 model runs in its own process: on this AMD EPYC, a process that had compiled it died of a
    segmentation fault at a later subprocess call (``test_lint``), which the float32 engines never caused."""
    files = [str(f) for f in _images(tiny_category)[:3]]
    script = (
        "import sys, numpy as np, prnad\n"
        "run, files = sys.argv[1], sys.argv[2:]\n"
        "ref = prnad.load(run, device='cpu', engine='openvino')\n"
        "red = prnad.load(run, device='cpu', engine='openvino', precision='bf16')\n"
        "assert (ref.runner.name, red.runner.name) == ('openvino', 'openvino bf16')\n"
        "hint = str(red.runner.compiled.get_property('INFERENCE_PRECISION_HINT'))\n"
        "assert hint in {\"<Type: 'bfloat16'>\", \"<Type: 'float32'>\"}, hint  # float32: no bfloat16 CPU\n"
        "diff = max(float(np.abs(a.anomaly_map - b.anomaly_map).max()) "
        "for a, b in zip(ref.predict(files), red.predict(files)))\n"
        "print(diff)\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(run), *files], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert float(done.stdout.split()[-1]) < 0.05
    with pytest.raises(ConfigError, match="precision 'fp16' is not one engine 'openvino' runs"):
        prnad.load(run, device="cpu", engine="openvino", precision="fp16")


def test_engines_benchmark_evaluates_every_engine_and_reports_the_corrupt_file(run: Path, tmp_path: Path, monkeypatch):
    """benchmarks/engines.py on the tiny run: a row per engine; the float32 engines
    give PyTorch's metrics to 0.1 point and maps within 1e-3; predict reports the corrupt file it drops in."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import engines

    data = engines.main(["--run", str(run), "--results", str(tmp_path), "--openvino-precisions", "fp32"])
    rows = {r["engine"]: r for r in data["engines"]}
    assert list(rows) == ["torch", "onnxruntime", "openvino"]  # bf16: see the test above
    for name in ("onnxruntime", "openvino"):
        for key, value in rows[name]["metrics"].items():
            assert value == pytest.approx(rows["torch"]["metrics"][key], abs=0.1), (name, key)
        assert rows[name]["max_map_diff_vs_torch"] < 1e-3
    predicted = data["predict"]
    assert predicted["scored"] == predicted["inputs"] - 1 == predicted["with_map_mask_overlay"]
    assert [f["path"].endswith("zz_corrupt.png") for f in predicted["failed"]] == [True]
    assert (tmp_path / "engines_bottle.md").is_file()


# --------------------------------------------------------------------------- engines on any machine, any caller


def test_cpu_engines_take_the_cpu_when_auto_resolves_to_a_gpu(run: Path, monkeypatch):
    """On a machine with CUDA, ``device="auto"`` means the CPU for ONNX Runtime and OpenVINO; only an explicit
    CUDA device is refused, naming the engine."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    for engine in ("onnxruntime", "openvino"):
        detector = prnad.load(run, engine=engine)  # device="auto"
        assert detector.device == torch.device("cpu") and detector.engine == engine
        with pytest.raises(ConfigError, match=f"engine '{engine}' runs on the CPU"):
            prnad.load(run, device="cuda", engine=engine)


def test_export_from_a_detector_on_another_device(run: Path, tmp_path: Path):
    """A detector whose model lives off the CPU (on a GPU; here on the meta device, which holds no data, so a
    trace there fails) exports from a CPU copy of the run's model file, as on the CPU."""
    copy = Path(shutil.copytree(run, tmp_path / "run"))
    shutil.rmtree(copy / "export")
    detector = prnad.load(copy, device="cpu")
    detector.model.to("meta")
    path = detector.export("onnx")
    maps = [
        p.anomaly_map for p in prnad.load(copy, device="cpu", engine="onnxruntime").predict([np.zeros((64, 64, 3))])
    ]
    reference = prnad.load(copy, device="cpu").predict([np.zeros((64, 64, 3))])[0].anomaly_map
    assert path == copy / "export" / "model.onnx" and np.abs(maps[0] - reference).max() < 1e-3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_export_of_a_detector_loaded_on_cuda(run: Path, tmp_path: Path):
    copy = Path(shutil.copytree(run, tmp_path / "run"))
    shutil.rmtree(copy / "export")
    assert prnad.load(copy, device="cuda").export("onnx").is_file()


def test_a_missing_onnxscript_names_the_extra(run: Path, tmp_path: Path, monkeypatch, capsys):
    copy = Path(shutil.copytree(run, tmp_path / "run"))
    shutil.rmtree(copy / "export")
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import onnxscript now raises ImportError
    assert main(["export", str(copy)]) == 2
    err = capsys.readouterr().err
    assert "onnxscript is not installed" in err and "prnad[deploy]" in err and "Traceback" not in err
    assert not (copy / "export" / "model.onnx").exists()


def test_an_openvino_conversion_error_is_one_clear_error(run: Path, tmp_path: Path, monkeypatch, capsys):
    import openvino

    copy = Path(shutil.copytree(run, tmp_path / "run"))
    shutil.rmtree(copy / "export" / "openvino")

    def broken(*args, **kwargs):
        raise RuntimeError("Check 'node' failed at src/frontends/onnx/frontend.cpp:123\nmore lines")

    monkeypatch.setattr(openvino, "convert_model", broken)
    with pytest.raises(prnad.ExportError, match=r"OpenVINO conversion failed \(RuntimeError: Check 'node'"):
        prnad.export(copy, "openvino")
    assert main(["export", str(copy), "--format", "openvino"]) == 2
    err = capsys.readouterr().err
    assert "model.xml: OpenVINO conversion failed" in err and "Traceback" not in err and "more lines" not in err


def test_an_onnx_export_error_is_one_clear_error(run: Path, tmp_path: Path, monkeypatch):
    copy = Path(shutil.copytree(run, tmp_path / "run"))
    shutil.rmtree(copy / "export")

    def broken(*args, **kwargs):
        raise torch.onnx.errors.UnsupportedOperatorError("aten::weird", 18, 19)

    monkeypatch.setattr(torch.onnx, "export", broken)
    with pytest.raises(prnad.ExportError, match=r"model.onnx: ONNX export failed \(UnsupportedOperatorError"):
        prnad.export(copy, "onnx")


@pytest.mark.parametrize("engine", ["torch", "onnxruntime", "openvino"])
def test_concurrent_calls_give_the_sequential_results(run: Path, tiny_category: Path, engine: str):
    """Eight threads calling ``predict`` on one detector at once get what the same calls give one by one."""
    from concurrent.futures import ThreadPoolExecutor

    detector = prnad.load(run, device="cpu", engine=engine)
    rng = np.random.default_rng(0)
    inputs = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(8)] + _images(tiny_category)
    calls = [inputs[i::8] for i in range(8)] * 4  # 32 calls, batches of 2-3 images
    sequential = [detector.predict(call) for call in calls]
    with ThreadPoolExecutor(8) as pool:
        concurrent = list(pool.map(detector.predict, calls))
    for one, other in zip(sequential, concurrent, strict=True):
        for a, b in zip(one, other, strict=True):
            assert a.score == b.score and np.array_equal(a.anomaly_map, b.anomaly_map)
