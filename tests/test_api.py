"""The Python API: prnad.train / prnad.load / Detector.predict / Detector.evaluate, and the package's imports."""

from __future__ import annotations

import ast
import doctest
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import prnad
import prnad.api
import prnad.model
from prnad.cli import main
from tests.conftest import score_tolerance, tiny_overrides

SRC = Path(__file__).resolve().parents[1] / "src" / "prnad"
README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(scope="module")
def run(tiny_category: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("api") / "run"
    prnad.train(tiny_category, out, overrides=tiny_overrides(tiny_category), seed=0)
    return out


@pytest.fixture(scope="module")
def detector(run: Path) -> prnad.Detector:
    return prnad.load(run, device="cpu")


def test_train_returns_a_detector_of_the_run(tiny_category: Path, tmp_path: Path):
    detector = prnad.train(tiny_category, tmp_path / "r", overrides=tiny_overrides(tiny_category), seed=1)
    assert isinstance(detector, prnad.Detector)
    assert detector.config.train.seed == 1 and detector.image_size == 64
    assert (tmp_path / "r" / "model.safetensors").is_file()


def test_predict_accepts_a_path_a_pil_image_and_an_array(detector: prnad.Detector, tiny_category: Path):
    path = tiny_category / "test" / "hole" / "000.png"
    from_path = detector.predict(path)
    from_str = detector.predict(str(path))
    with Image.open(path) as im:
        from_pil = detector.predict(im.copy())
        array = np.asarray(im.convert("RGB"))
    from_array = detector.predict(array)
    assert from_path.source == str(path) and from_array.source == "<image 0>"
    for other in (from_str, from_pil, from_array):
        assert other.score == pytest.approx(from_path.score, abs=1e-6)
        np.testing.assert_allclose(other.anomaly_map, from_path.anomaly_map, atol=1e-6)


def test_anomaly_map_is_float32_at_the_input_size(detector: prnad.Detector):
    rng = np.random.default_rng(0)
    for shape in ((40, 90, 3), (128, 128, 3), (33, 17)):
        result = detector.predict(rng.integers(0, 256, shape, dtype=np.uint8))
        assert result.anomaly_map.shape == shape[:2]
        assert result.anomaly_map.dtype == np.float32
        assert result.anomaly_map.min() >= 0.0 and result.anomaly_map.max() <= 1.0
        assert np.isfinite(result.score)  # with the default score banks, a sum of z-scores (any real number)


def test_batched_predictions_equal_one_at_a_time(detector: prnad.Detector, tiny_category: Path):
    paths = sorted((tiny_category / "test").rglob("*.png"))
    batched = detector.predict(paths, batch_size=4)
    assert isinstance(batched, list) and len(batched) == len(paths)
    for path, result in zip(paths, batched, strict=True):
        single = detector.predict(path)
        assert result.source == str(path)
        assert result.score == pytest.approx(single.score, abs=score_tolerance(detector, single.score))


def test_an_iterator_is_consumed_lazily(detector: prnad.Detector, tiny_category: Path):
    paths = sorted((tiny_category / "test").rglob("*.png"))
    pulled: list[Path] = []

    def images():
        for p in paths:
            pulled.append(p)
            yield p

    results = detector.predict(images(), batch_size=2)
    assert pulled == []  # nothing read before the first result is asked for
    first = next(results)
    assert len(pulled) == 2 and first.source == str(paths[0])
    assert len(list(results)) == len(paths) - 1


def test_a_bad_input_raises_or_is_reported(detector: prnad.Detector, tmp_path: Path, tiny_category: Path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(prnad.DataError, match="bad.png"):
        detector.predict(bad)
    good = tiny_category / "test" / "good" / "000.png"
    results = detector.predict([good, bad, good], skip_errors=True)
    assert [r.ok for r in results] == [True, False, True]
    assert "bad.png" in results[1].error and results[1].anomaly_map is None and np.isnan(results[1].score)
    with pytest.raises(prnad.DataError, match="dtype"):
        detector.predict(np.zeros((8, 8, 3), dtype=np.int64))


def test_evaluate_gives_the_numbers_of_the_cli(run: Path, detector: prnad.Detector, capsys):
    result = detector.evaluate()
    assert main(["evaluate", str(run)]) == 0
    import json

    from_cli = json.loads((run / "metrics.json").read_text())
    assert from_cli["metrics"] == result["metrics"]
    assert from_cli["per_type"] == result["per_type"]
    assert set(result["per_type"]) == {"hole", "scratch"}
    assert result["test_images"] == 3 + 6 - 2


def test_the_docstring_examples_run():
    for module in (prnad, prnad.api):
        failures, tried = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert tried > 0 and failures == 0, module.__name__


def test_the_readme_python_example_runs(run: Path, tiny_category: Path, monkeypatch, tmp_path: Path):
    """The README's python block, with its paths pointed at the tiny run (training is left out: seconds here)."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README has a python example"
    code = blocks[0]
    assert "prnad.load(" in code and ".predict(" in code and ".evaluate(" in code
    image = tiny_category / "test" / "hole" / "001.png"
    code = re.sub(r"^detector = prnad\.train\(.*$", "", code, flags=re.M)
    code = code.replace('"runs/bottle"', repr(str(run))).replace('"img.png"', repr(str(image)))
    code = code.replace('"data/bottle"', repr(str(tiny_category)))
    code = code.replace('"new_images/"', repr(str(tiny_category / "test" / "good")))
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})


# ---------------------------------------------------------------------------------------------- the imports


def _imports(path: Path) -> set[str]:
    """prnad modules imported by a source file (top level and inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("prnad"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("prnad"))
    return found


def _module_graph() -> dict[str, set[str]]:
    modules = {}
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return {name: {m for m in _imports(path) if m in modules and m != name} for name, path in modules.items()}


def test_the_package_has_no_import_cycle():
    graph = _module_graph()
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                raise AssertionError(f"import cycle: {' -> '.join([*stack, node, nxt])}")
            if nxt not in state:
                visit(nxt, [*stack, node])
        state[node] = 2

    for module in graph:
        if module not in state:
            visit(module, [])


def test_cli_imports_only_the_api_and_the_config():
    allowed = {"prnad", "prnad.api", "prnad.config", "prnad.errors", "prnad._version"}
    imported = {m for m in _imports(SRC / "cli.py") if m in _module_graph()}
    assert imported <= allowed, imported - allowed


def test_inference_never_imports_training():
    graph = _module_graph()
    reach, todo = set(), ["prnad.inference"]
    while todo:
        for nxt in graph[todo.pop()]:
            if nxt not in reach:
                reach.add(nxt)
                todo.append(nxt)
    assert not any(m.startswith("prnad.training") for m in reach), sorted(reach)


def test_presets_layer_under_the_config_and_an_unknown_one_is_refused():
    """make_config(preset=...): the preset over the defaults, the config and overrides over the preset; the
    'default' preset is the defaults; an unknown name raises ConfigError naming the presets."""
    line = prnad.make_config(preset="line").model
    assert (line.prototype_match, line.score_bank_size, line.decoder_channels) == ("map", 0, (32, 16, 8))
    balanced = prnad.make_config(preset="balanced", overrides={"model": {"msa_blocks": 2}}).model
    assert balanced.score_bank_size == prnad.make_config().model.score_bank_size > 0 and balanced.msa_blocks == 2
    assert prnad.make_config(preset="default") == prnad.make_config()
    with pytest.raises(prnad.ConfigError, match="line, balanced"):
        prnad.make_config(preset="fast")


def test_the_paper_preset_builds_the_papers_model():
    """--preset paper: whole-map prototypes, the top-K score without banks, the head at strides 4, 8 and 16 with
    two MSA blocks of three window sizes (whole map, 2x2, 4x4) at each, the decoder from the stride-32 map."""
    from prnad.model import build_prn
    from prnad.model.prototypes import nearest_prototype

    config = prnad.make_config(preset="paper", overrides={"model": {"encoder": {"weights": "random"}}})
    encoder = prnad.model.build_encoder(config.model.encoder)
    prototypes = [torch.zeros(2, encoder.channels[i], 64 // r, 64 // r) for i, r in enumerate((4, 8, 16))]
    model = build_prn(config.model, prototypes=prototypes, encoder=encoder)
    assert model.match is nearest_prototype and model.n_score_banks == 0 and model.residual_kind == "squared"
    assert model.head_scales == (0, 1, 2) and model.topk == 100 and model.score_smoothing == 0
    assert [len(stack.blocks) for stack in model.attention] == [2, 2, 2]
    assert all(block.grids == (1, 2, 4) for stack in model.attention for block in stack.blocks)
    assert model.decoder.has_bottom and config.model.prototype_ratio == 0.1
    out = model.eval()(torch.rand(1, 3, 64, 64))
    assert out.anomaly_map.shape == (1, 1, 64, 64) and out.distances is None
    assert prnad.make_config(preset="paper").model != prnad.make_config().model


BENCHMARKS = SRC.parents[1] / "benchmarks"


def _prnad_names(tree: ast.AST) -> tuple[set[str], set[str]]:
    """Names a script binds to prnad modules, and the private prnad names it imports or reads from them."""
    modules, private = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.update((a.asname or a.name).split(".")[0] for a in node.names if a.name.startswith("prnad"))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("prnad"):
            private.update(f"{node.module}.{a.name}" for a in node.names if a.name.startswith("_"))
            modules.update(a.asname or a.name for a in node.names)  # a module or a name; names are checked below
    for node in ast.walk(tree):
        named = isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules
        if named and node.attr.startswith("_") and not node.attr.startswith("__"):
            private.add(f"{node.value.id}.{node.attr}")
    return modules, private


def test_benchmark_scripts_use_only_public_prnad_names_and_import_no_circle():
    scripts = {p.stem: p for p in BENCHMARKS.glob("*.py")}
    graph, private = {}, {}
    for name, path in scripts.items():
        tree = ast.parse(path.read_text())
        private[name] = _prnad_names(tree)[1]
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imported.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
        graph[name] = imported & set(scripts)
    assert {k: v for k, v in private.items() if v} == {}
    for start in graph:
        seen, frontier = set(), list(graph[start])
        while frontier:
            nxt = frontier.pop()
            assert nxt != start, f"benchmarks/{start}.py imports itself back through {sorted(seen)}"
            if nxt not in seen:
                seen.add(nxt)
                frontier += graph[nxt]
