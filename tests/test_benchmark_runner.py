"""`prnad benchmark`: an experiment file's cells run once each, gathered into one report, here or on Ray."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

import prnad
from prnad import experiments as bench
from prnad.cli import main
from prnad.data import write_tiny_category

CELL_KEYS = {"cell", "variant", "dataset", "category", "seed", "config_hash"}
FAST = {
    "data": {"image_size": 64, "seen_anomalies": 2},
    "model": {"encoder": {"weights": "random"}, "kmeans_restarts": 1, "decoder_channels": [16, 16, 8]},
    "train": {"iterations": 2, "batch_size": 4, "num_workers": 0},
}


@pytest.fixture(scope="module")
def two_categories(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bench_data")
    for i, name in enumerate(("alpha", "beta")):
        write_tiny_category(root / name, rng=np.random.default_rng(10 + i), size=64, n_train=8, n_good_test=3)
    return root


def _experiment_file(folder: Path, data: Path, **changes) -> Path:
    values = {
        "name": "fixture",
        "variants": [{"name": "small", "overrides": FAST}],
        "datasets": [{"name": "tiny", "root": str(data), "categories": ["alpha", "beta"]}],
        "seeds": [0, 1],
        "reference": {"tiny": {"alpha": {"image_auroc": 99.0, "pixel_auroc": 98.0}}},
        "reference_name": "paper",
    } | changes
    path = folder / "experiment.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def _without_times(report: str) -> list[str]:
    """The report's table rows without the last two columns (training minutes, ms per image) and the date."""
    rows = [line for line in report.splitlines() if line.startswith("| ")]
    return ["|".join(row.split("|")[:-3]) for row in rows]


@pytest.fixture(scope="module")
def local_run(two_categories: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    folder = tmp_path_factory.mktemp("bench_local")
    experiment = _experiment_file(folder, two_categories)
    assert main(["benchmark", str(experiment), "--out", str(folder / "out")]) == 0
    return experiment, folder / "out", json.loads((folder / "out" / "report.json").read_text())


def test_every_cell_runs_once_and_the_table_holds_each_category(local_run):
    _, out, data = local_run
    assert sorted(p.name for p in (out / "cells").iterdir()) == [
        f"small__tiny__{c}__seed{s}.json" for c in ("alpha", "beta") for s in (0, 1)
    ]
    for category in ("alpha", "beta"):
        summary = data["tables"]["tiny"][category]["small"]
        assert summary["seeds"] == [0, 1]
        cells = [r for r in data["cells"] if r["category"] == category]
        values = [r["metrics"]["image_auroc"] for r in cells]
        assert summary["image_auroc"]["mean"] == pytest.approx(np.mean(values), abs=1e-4)
        assert summary["image_auroc"]["std"] == pytest.approx(np.std(values, ddof=1), abs=1e-4)
        assert (out / "runs" / "small" / "tiny" / category / "seed1" / "model.safetensors").is_file()
    report = (out / "report.md").read_text()
    assert re.search(r"^\| alpha \| paper \| 99 \| 98 \| - \| - \|", report, re.M)
    assert "prnad benchmark" in data["command"]


def test_a_second_call_redoes_nothing(local_run, monkeypatch):
    experiment, out, data = local_run
    before = {p.name: p.stat().st_mtime_ns for p in (out / "cells").iterdir()}

    def must_not_run(*args, **kwargs):
        raise AssertionError("a finished cell was run again")

    monkeypatch.setattr(bench, "run_cell", must_not_run)
    again = prnad.benchmark(experiment, out)
    assert again["tables"] == data["tables"]
    assert {p.name: p.stat().st_mtime_ns for p in (out / "cells").iterdir()} == before


def test_a_finished_run_without_its_record_is_evaluated_not_trained(local_run, monkeypatch):
    """A cell whose run folder holds a finished run of its config (killed while evaluated, or trained by
    `prnad train` and put there) gets its record from an evaluation; training it is not called."""
    experiment, out, data = local_run
    (out / "cells" / "small__tiny__alpha__seed0.json").unlink()
    monkeypatch.setattr("prnad.training.train", lambda *a, **k: pytest.fail("a finished run was trained again"))
    again = prnad.benchmark(experiment, out)
    assert (
        again["tables"]["tiny"]["alpha"]["small"]["image_auroc"]
        == data["tables"]["tiny"]["alpha"]["small"]["image_auroc"]
    )
    record = json.loads((out / "cells" / "small__tiny__alpha__seed0.json").read_text())
    assert record["wall_minutes"] is None and record["train_minutes"] > 0


def test_a_killed_cell_and_a_changed_config_are_run_again(local_run, tmp_path: Path, monkeypatch):
    experiment, out, data = local_run
    ran = []
    kept = {k: v for k, v in data["cells"][0].items() if k not in CELL_KEYS}
    monkeypatch.setattr(bench, "run_cell", lambda config, run_dir, engines, train: ran.append((run_dir, train)) or kept)
    (out / "cells" / "small__tiny__beta__seed1.json").unlink()  # as if killed before its record was written
    (out / "runs" / "small" / "tiny" / "beta" / "seed1" / "model.safetensors").unlink()  # ... and its training
    prnad.benchmark(experiment, out)
    assert ran == [(str(out / "runs" / "small" / "tiny" / "beta" / "seed1"), True)]
    changed = bench.load_experiment(experiment)
    variant = bench.Variant("small", overrides=bench.merge(FAST, {"train": {"iterations": 3}}))
    changed = bench.Experiment(changed.name, (variant,), changed.datasets, changed.seeds)
    ran.clear()
    bench.run_experiment(changed, out, log=lambda line: None)
    assert len(ran) == 4 and all(train for _, train in ran)  # every cell's config changed: trained again


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"seed": [0]}, "unknown key 'seed'"),
        ({"variants": [{"name": "a", "preset": "fastest"}]}, "unknown preset 'fastest'"),
        ({"variants": [{"name": "a"}, {"name": "a"}]}, "the name 'a' is used twice"),
        ({"seeds": [0, "one"]}, "expected a list of integers"),
        ({"variants": [{"name": "a", "overrides": {"train": {"iterationz": 3}}}]}, "train.iterationz"),
    ],
)
def test_a_wrong_experiment_file_is_one_line_naming_the_key(two_categories, tmp_path, capsys, change, message):
    experiment = _experiment_file(tmp_path, two_categories, **change)
    assert main(["benchmark", str(experiment), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()  # every cell's config is checked before anything runs


def test_experiment_files_read_back_equal(tmp_path: Path):
    experiment = bench.Experiment(
        "e",
        (bench.Variant("v", preset="line", overrides={"train": {"iterations": 5}}),),
        (bench.DatasetSpec("d", "data", ("a", "b"), layout="btad", overrides={"data": {"seen_anomalies": 3}}),),
        (0, 2),
    )
    assert bench.load_experiment(bench.write_experiment(tmp_path / "e.yaml", experiment)) == experiment


def test_ray_on_two_local_workers_gives_the_same_table(two_categories, local_run, tmp_path: Path):
    ray = pytest.importorskip("ray")
    _, _, data = local_run
    experiment = _experiment_file(tmp_path, two_categories)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        assert ray.cluster_resources()["CPU"] == 2
        on_ray = prnad.benchmark(experiment, tmp_path / "out", executor="ray")
    finally:
        ray.shutdown()
    report = (tmp_path / "out" / "report.md").read_text()
    local = bench.markdown(data)
    assert _without_times(report) == _without_times(local)
    assert [r["cell"] for r in on_ray["cells"]] == [r["cell"] for r in data["cells"]]


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "benchmarks" / "experiments").glob("*.yaml")))
def test_every_committed_experiment_file_builds_each_cells_config(path: Path, monkeypatch):
    monkeypatch.chdir(path.parents[2])  # their paths are relative to the repository root, where they are run
    experiment = bench.load_experiment(path)
    configs = [bench.cell_config(experiment, cell) for cell in bench.cells(experiment)]
    assert len(configs) == len(experiment.variants) * len(experiment.seeds) * sum(
        len(d.categories) for d in experiment.datasets
    )


def test_an_experiment_measures_every_engine_and_adds_one_without_training(two_categories, tmp_path, monkeypatch):
    """engines: each run evaluated through every engine (metrics and ms per image in one more table); adding an
    engine to a finished experiment evaluates the runs through it, and trains nothing."""
    pytest.importorskip("onnxruntime")
    datasets = [{"name": "tiny", "root": str(two_categories), "categories": ["alpha"]}]
    experiment = _experiment_file(tmp_path, two_categories, seeds=[0], datasets=datasets)
    prnad.benchmark(experiment, tmp_path / "out")
    _experiment_file(tmp_path, two_categories, seeds=[0], datasets=datasets, engines=["torch", "onnxruntime"])
    monkeypatch.setattr(bench, "run_cell", lambda *a: pytest.fail("a finished cell was trained again"))
    data = prnad.benchmark(experiment, tmp_path / "out")
    summary = data["tables"]["tiny"]["alpha"]["small"]
    onnx = summary["engines"]["onnxruntime"]
    for key in ("image_auroc", "pixel_auroc", "pro", "pixel_ap"):
        assert onnx[key]["mean"] == pytest.approx(summary[key]["mean"], abs=0.5)
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| alpha | small | onnxruntime |" in report and "| alpha | small | torch |" in report


def test_the_hard_setting_reports_seen_and_unseen_types(two_categories, tmp_path):
    """A dataset entry drawing every seen anomaly from one type: the report adds that run's metrics on the seen
    and the unseen types."""
    hard = {"data": {"seen_defect_types": ["scratch"]}}
    datasets = [{"name": "hard", "root": str(two_categories), "categories": ["alpha"], "overrides": hard}]
    experiment = _experiment_file(tmp_path, two_categories, seeds=[0], datasets=datasets)
    data = prnad.benchmark(experiment, tmp_path / "out")
    groups = data["cells"][0]["seen_unseen"]
    assert (groups["seen_types"]["types"], groups["unseen_types"]["types"]) == (["scratch"], ["hole"])
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| small__hard__alpha__seed0 | seen: scratch |" in report
    assert "| small__hard__alpha__seed0 | unseen: hole |" in report
