"""The benchmark reports: what the README quotes is what the committed results hold, and the reports say how
each number was made (every seed's command, the steps a training time covers)."""

from __future__ import annotations

import importlib.util
import json
import re
import statistics
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def _bench_module():
    spec = importlib.util.spec_from_file_location("bench_bottle", REPO / "benchmarks" / "bottle.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("category", ["bottle", "screw"])
def test_readme_quotes_the_mean_over_seeds(category: str):
    """The README's results table: the default experiment's report, means over seeds 0-2."""
    data = json.loads((RESULTS / "default" / "report.json").read_text())
    summary = data["tables"]["mvtec_ad"][category]["default"]
    assert summary["seeds"] == [0, 1, 2]
    means = [summary[k]["mean"] for k in ("image_auroc", "pixel_auroc", "pro", "pixel_ap")]
    row = re.search(
        rf"^\| {category} \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|", (REPO / "README.md").read_text(), re.M
    )
    assert row is not None, f"the README has no {category} row"
    assert [float(v) for v in row.groups()] == [round(m, 1) for m in means]


def _run(seed: int, resumed_from: int | None, command: str) -> dict:
    metrics = {"image_auroc": 100.0, "pixel_auroc": 98.0 + seed, "pro": 97.0, "pixel_ap": 90.0}
    return {
        "seed": seed,
        "metrics": metrics,
        "metrics_float32_sigmoid": metrics,
        "train_minutes": 30.0,
        "iterations": 1300,
        "iterations_timed": 1300 - (resumed_from or 0),
        "inference_ms_per_image": 48.0,
        "device": "cpu",
        "date": "2026-11-27",
        "command": command,
        "machine": "m",
        "encoder": {"backbone": "mobilenet_v2_tf", "weights": "w.pth"},
        "test_images": 73,
    }


def test_report_names_every_seeds_command_and_the_steps_a_time_covers(tmp_path: Path):
    bench = _bench_module()
    runs = {"0": _run(0, None, "python benchmarks/bottle.py --seeds 0"), "1": _run(1, 250, "... --seeds 1 --resume")}
    data = {"category": "bottle", "runs": runs, "summary": bench.summarise(runs)}
    data["summary_float32_sigmoid"] = bench.summarise(runs, "metrics_float32_sigmoid")
    path = tmp_path / "bottle.md"
    bench.write_markdown(path, data)
    text = path.read_text()
    assert "python benchmarks/bottle.py --seeds 0" in text and "... --seeds 1 --resume" in text
    assert "1050 of 1300" in text and "1300 of 1300" in text
    assert data["summary"]["pixel_auroc"]["mean"] == 98.5


def test_ablation_imports_benchmark_runs_as_the_candidate_they_were(tmp_path: Path, monkeypatch):
    """ablation.py --import-baseline ... --import-as NAME files a category benchmark's seeds under NAME (the
    default model is a candidate of its own, not the spec's baseline); a name outside the table is refused."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import ablation

    bench = tmp_path / "screw.json"
    runs = {"0": _run(0, None, "python benchmarks/bottle.py --seeds 0"), "1": _run(1, None, "... --seeds 1")}
    bench.write_text(json.dumps({"category": "screw", "runs": runs}))
    out = tmp_path / "results"
    ablation.main(["--results", str(out), "--import-baseline", str(bench), "--import-as", "patch_bank"])
    data = json.loads((out / "ablation.json").read_text())
    assert sorted(data["runs"]) == ["screw/patch_bank/1300/cpu/seed0", "screw/patch_bank/1300/cpu/seed1"]
    row = "| screw | 1300 | cpu | patch_bank | model.prototype_match=patch, model.score_bank_size=4096 | 0,1 |"
    assert row in (out / "ablation.md").read_text()
    assert "| 98.5 |" in (out / "ablation.md").read_text()  # pixel AUROC: the mean of 98.0 and 99.0
    with pytest.raises(SystemExit):
        ablation.main(["--results", str(out), "--import-baseline", str(bench), "--import-as", "nonsense"])


def test_benchmark_records_an_ablation_candidate_only_if_it_is_the_config_it_trains(tmp_path: Path, monkeypatch):
    """bottle.py --from-ablation NAME files the ablation's runs of NAME as the category benchmark's seeds, with
    the ablation's command, when NAME's config equals the one bottle.py trains; a candidate that changes the
    config is refused and nothing is written."""
    bench = _bench_module()
    default = bench.config.build_config().train.iterations
    candidates = tmp_path / "ablation.yaml"
    variants = [{"name": "same", "overrides": {"model": {"topk": 100}}}]
    variants += [{"name": "other", "overrides": {"model": {"topk": 5}}}]
    datasets = [{"name": "d", "root": "data", "categories": ["bottle"]}]
    candidates.write_text(json.dumps({"name": "ablation", "variants": variants, "datasets": datasets, "seeds": [0]}))
    monkeypatch.setattr(bench, "ABLATION", candidates)
    runs = {}
    for name in ("same", "other"):
        for seed in (0, 1):
            run = _run(seed, None, "python benchmarks/bottle.py ...") | {"iterations": default}
            run |= {
                "candidate": name,
                "category": "bottle",
                "ablation_command": f"python benchmarks/ablation.py {name}",
            }
            runs[f"bottle/{name}/{default}/cpu/seed{seed}"] = run
    results = tmp_path / "results"
    results.mkdir()
    (results / "ablation.json").write_text(json.dumps({"runs": runs}))
    config = tmp_path / "empty.yaml"
    config.write_text("{}\n")
    argv = ["--data", str(tmp_path / "bottle"), "--config", str(config), "--results", str(results), "--seeds", "0", "1"]
    bench.main([*argv, "--from-ablation", "same"])
    data = json.loads((results / "bottle.json").read_text())
    assert sorted(data["runs"]) == ["0", "1"]
    assert {r["command"] for r in data["runs"].values()} == {"python benchmarks/ablation.py same"}
    assert data["summary"]["pixel_auroc"]["mean"] == 98.5
    assert "--from-ablation" in (results / "bottle.md").read_text()
    (results / "bottle.json").unlink()
    with pytest.raises(SystemExit, match="not the config"):
        bench.main([*argv, "--from-ablation", "other"])
    assert not (results / "bottle.json").exists()


@pytest.mark.parametrize(("preset", "candidate"), [("line", "line_lite"), ("balanced", "line_banks")])
def test_a_preset_is_the_ablation_candidate_that_was_measured(monkeypatch, preset: str, candidate: str):
    """configs/<preset>.yaml, and the encoder's config with the API's preset of that name, train what the
    candidate its figures come from trained (line_banks: the line_lite runs with score banks added, which is
    what training it gives)."""
    import prnad

    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import ablation

    bench = _bench_module()
    config = bench.config
    encoder = config.load_yaml(REPO / "configs/mobilenet_v2_tf.yaml")
    measured = config.to_dict(config.build_config(encoder, bench.dotted_overrides(ablation.candidate_sets(candidate))))
    assert config.to_dict(config.build_config(config.load_yaml(REPO / f"configs/{preset}.yaml"))) == measured
    assert config.to_dict(prnad.make_config(REPO / "configs/mobilenet_v2_tf.yaml", preset=preset)) == measured


def _bank_means(name: str, part: str) -> str:
    runs = json.loads((RESULTS / f"{name}.json").read_text())["runs"].values()
    keys = ("image_auroc", "pixel_auroc", "pro", "pixel_ap")
    means = [statistics.mean(r[part]["metrics"][k] for r in runs) for k in keys]
    return " / ".join(f"{m:.1f}" if m == 100 else f"{m:.2f}" for m in means)


def _speeds(model: str) -> str:
    rows = json.loads((RESULTS / "speed_presets_rounds.json").read_text())["rows"]
    whole = {r["engine"]: r["ms_per_call"] for r in rows if r["model"] == model and r["part"] == "whole"}
    return " / ".join(f"{whole[e]:.2f}" for e in ("onnxruntime", "onnxruntime spin=run", "openvino"))


@pytest.mark.parametrize(
    ("row", "banks", "part", "run"),
    [
        ("`--preset line`", "bank_line_lite_1024", "before", "runs/ablation/bottle_line_lite/seed0"),
        (
            "`--preset line --score-bank-size 1024`",
            "bank_line_lite_1024",
            "after",
            "runs/ablation/bottle_line_lite/seed0_bank1024",
        ),
        ("`--preset balanced`", "bank_line_lite_4096", "after", "runs/ablation/bottle_line_lite/seed0_bank4096"),
    ],
)
def test_readme_presets_table_quotes_the_results(row: str, banks: str, part: str, run: str):
    """The presets table of docs/deploying.md: screw and bottle means over seeds and the speeds of one sitting, as the
    committed results hold them."""
    expected = f"| {row} | {_bank_means(banks, part)} | {_bank_means(banks + '_bottle', part)} | {_speeds(run)} |"
    assert expected in (REPO / "docs" / "deploying.md").read_text()


def test_speed_profiles_a_light_head_with_score_banks(tmp_path: Path, monkeypatch):
    """benchmarks/speed.py on a random-weights model built from --set overrides: every part is timed and the
    stage-by-stage profile gives the model's own logits (checked inside speed.py)."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import speed

    sets = ["data.image_size=64", "model.encoder.backbone=resnet18", "model.head_scales=[1,2]"]
    sets += ["model.score_bank_size=8", "model.decoder_channels=[8,8,8]"]
    args = ["--engines", "torch", "--batches", "1", "--repeats", "1", "--warmup", "0", "--results", str(tmp_path)]
    data = speed.main(args + [item for s in sets for item in ("--set", s)])
    assert set(data["profile_torch_b1_ms"]) == set(speed.PARTS) and data["profile_torch_b1_ms"]["score banks"] > 0
    assert "model.head_scales=[1,2]" in data["model"] and (tmp_path / "speed.md").is_file()


def test_speed_times_each_engine_in_a_process_of_its_own_in_rounds(tmp_path: Path, monkeypatch):
    """With two engines, speed.py measures each in a child process (nothing of the other engine loaded), the
    processes taking turns for --rounds rounds, and reports both engines' rows (ONNX Runtime in both spin
    modes) in one results file: per cell the median of its round medians, within their range."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import speed

    sets = ["data.image_size=64", "model.encoder.backbone=resnet18", "model.score_bank_size=8"]
    sets += ["model.decoder_channels=[8,8,8]"]
    args = ["--engines", "torch", "onnxruntime", "--batches", "1", "--repeats", "2", "--warmup", "0", "--rounds", "3"]
    data = speed.main([*args, "--results", str(tmp_path), *[item for s in sets for item in ("--set", s)]])
    assert data["engines_isolated"] and not data["skipped"] and data["rounds"] == 3
    assert [(r["engine"], r["part"]) for r in data["rows"]] == [
        (e, p) for e in ("torch", "onnxruntime", "onnxruntime spin=run") for p in ("whole", "encoder")
    ]
    for r in data["rows"]:
        assert len(r["round_medians_ms"]) == 3
        assert r["ms_per_call"] == round(statistics.median(r["round_medians_ms"]), 3)
        assert r["round_min_ms"] <= r["ms_per_call"] <= r["round_max_ms"]
    text = (tmp_path / "speed.md").read_text()
    assert "process of its own" in text and "Median over 3 rounds" in text


def test_speed_compares_several_runs_in_the_same_rounds(tiny_category: Path, tmp_path: Path, monkeypatch):
    """speed.py --run A B: each run's engine in a process of its own, all in the same rounds; every row names its
    run, in the order given, and each run's PyTorch parts are profiled (the stages give its own logits)."""
    import prnad
    from tests.conftest import tiny_overrides

    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import speed

    runs = []
    for name, bank in (("a", 0), ("b", 16)):
        values = tiny_overrides(tiny_category)
        values["model"]["score_bank_size"] = bank
        values["threshold"] = {"holdout_fraction": 0.2, "calibration_anomalies": 4}
        runs.append(str(prnad.train(tiny_category, tmp_path / name, overrides=values).run_dir))
    args = ["--run", *runs, "--engines", "torch", "--batches", "1", "--repeats", "2", "--warmup", "0"]
    data = speed.main([*args, "--rounds", "2", "--results", str(tmp_path)])
    assert data["engines_isolated"] and data["rounds"] == 2
    assert [(r["model"], r["part"]) for r in data["rows"]] == [(run, p) for run in runs for p in ("whole", "encoder")]
    assert all(len(r["round_medians_ms"]) == 2 for r in data["rows"])
    assert list(data["profile_torch_b1_ms"]) == runs
    assert data["profile_torch_b1_ms"][runs[0]]["score banks"] < data["profile_torch_b1_ms"][runs[1]]["score banks"]
    text = (tmp_path / "speed.md").read_text()
    assert f"| {runs[1]} | torch | fp32 | whole | 1 |" in text and f"| part | {runs[0]} | {runs[1]} |" in text
    with pytest.raises(SystemExit):
        speed.main([*args, "--no-isolate", "--results", str(tmp_path)])


def test_gpu_check_packs_a_run_and_compares_a_device_with_the_cpu(tmp_path: Path, monkeypatch):
    """benchmarks/gpu_check.py: pack copies the run and the test split at the run's size (masks still binary);
    check on the packed copy, here with the CPU as the device, finds no difference in float32 and a nonzero
    one in bf16, and the packed split gives the metrics of the original."""
    from PIL import Image

    import prnad
    from prnad.data import write_tiny_category
    from tests.conftest import tiny_overrides

    category = write_tiny_category(
        tmp_path / "tiny128", rng=np.random.default_rng(1), size=128, n_train=8, n_good_test=3
    )
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import gpu_check

    detector = prnad.train(category, tmp_path / "runs" / "seed0", overrides=tiny_overrides(category))  # 64 px
    packed = gpu_check.main(
        ["pack", "--runs", str(detector.run_dir), "--data", str(category), "--out", str(tmp_path / "dd")]
    )
    masks = gpu_check.images_under(Path(packed["data"]) / "ground_truth")
    assert masks and all(
        Image.open(m).size == (64, 64) and set(np.unique(np.asarray(Image.open(m)))) <= {0, 255} for m in masks
    )
    args = ["check", "--runs", *packed["runs"], "--data", packed["data"], "--device", "cpu", "--images", "4"]
    data = gpu_check.main([*args, "--precisions", "fp32", "bf16", "--results", str(tmp_path / "results")])
    run = data["runs"][packed["runs"][0]]
    fp32, bf16 = run["device"]["fp32"], run["device"]["bf16"]
    assert fp32["max_map_diff"] == fp32["max_score_diff"] == fp32["max_metric_diff_points"] == 0
    assert fp32["decisions_changed"] == 0 and bf16["max_map_diff"] > 0
    assert run["cpu_fp32"]["metrics"] == pytest.approx(detector.evaluate()["metrics"], abs=1e-6)
    assert "| cpu fp32 |" in (tmp_path / "results" / "gpu_check.md").read_text()


@pytest.mark.parametrize("engine", ["onnxruntime", "openvino"])
def test_ort_profile_puts_the_kernel_time_under_the_models_parts(tmp_path: Path, monkeypatch, engine: str):
    """benchmarks/ort_profile.py: per-part and per-operator times sum to the same kernel time, the encoder's
    convolutions are found under the encoder, and the score banks' distances under PRN's own code; in either
    engine."""
    pytest.importorskip(engine)
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import ort_profile

    sets = ["data.image_size=64", "model.encoder.backbone=resnet18", "model.score_bank_size=8"]
    sets += ["model.decoder_channels=[8,8,8]"]
    args = ["--repeats", "2", "--warmup", "1", "--results", str(tmp_path), "--engine", engine]
    data = ort_profile.main(args + [item for s in sets for item in ("--set", s)])
    assert data["engine"] == engine
    assert sum(data["by_part_ms"].values()) == pytest.approx(data["kernel_ms"], abs=0.01)
    assert sum(data["by_op_ms"].values()) == pytest.approx(data["kernel_ms"], abs=0.01)
    assert data["by_part_ms"]["encoder"] > 0 and data["by_part_ms"][ort_profile.OWN] > 0
    assert {"decoder", "attention"} <= set(data["by_part_ms"]) and (tmp_path / "ort_profile.md").is_file()


def test_existing_runs_are_evaluated_not_trained(tiny_category: Path, tmp_path: Path, monkeypatch):
    """bottle.py --existing evaluates each seed's finished run (here one with score banks) through the API:
    the same metrics as Detector.evaluate, train minutes from the run's record, and the float32 column takes
    the banks' score as evaluated (it is not a top-K mean of the map)."""
    import prnad
    from tests.conftest import tiny_overrides

    values = tiny_overrides(tiny_category)
    values["model"]["score_bank_size"] = 16
    values["threshold"] = {"holdout_fraction": 0.2, "calibration_anomalies": 4}
    run = prnad.train(tiny_category, tmp_path / "runs" / "seed0", overrides=values)
    monkeypatch.setattr(prnad, "train", None)  # training would fail loudly
    bench = _bench_module()
    args = ["--seeds", "0", "--data", str(tiny_category), "--name", "tiny", "--existing"]
    bench.main([*args, "--runs", str(tmp_path / "runs"), "--results", str(tmp_path / "results")])
    data = json.loads((tmp_path / "results" / "tiny.json").read_text())
    recorded = data["runs"]["0"]
    assert recorded["metrics"] == run.evaluate()["metrics"]
    assert recorded["train_minutes"] == round((run.info["train_seconds"] + run.info["score_bank_seconds"]) / 60, 2)
    assert recorded["metrics_float32_sigmoid"]["image_auroc"] == recorded["metrics"]["image_auroc"]
    assert "score banks added after training" not in (tmp_path / "results" / "tiny.md").read_text()


def test_map_fusion_default_candidate_is_the_models_own_map(tiny_category: Path, tmp_path: Path):
    """benchmarks/map_fusion.py rebuilds the parts of the fused map; its default candidate must rank pixels as
    the model's own map does (the same pixel AUROC and AP as Detector.evaluate)."""
    import prnad
    from tests.conftest import tiny_overrides

    values = tiny_overrides(tiny_category)
    values["model"].update(score_bank_size=16, prototype_match="patch")
    values["threshold"] = {"holdout_fraction": 0.2, "calibration_anomalies": 4}
    run = prnad.train(tiny_category, tmp_path / "run", overrides=values)
    spec = importlib.util.spec_from_file_location("map_fusion", REPO / "benchmarks" / "map_fusion.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main([str(tmp_path / "run"), "--results", str(tmp_path / "results")])
    figures = json.loads((tmp_path / "results" / "map_fusion.json").read_text())["runs"][str(tmp_path / "run")]
    metrics = run.evaluate()["metrics"]
    default = figures["figures"]["L+8+0.5x16 (default)"]
    assert default["pixel_auroc"] == pytest.approx(metrics["pixel_auroc"], abs=1e-3)
    assert default["pixel_ap"] == pytest.approx(metrics["pixel_ap"], abs=1e-3)
    assert figures["figures"]["L"]["pixel_ap"] != default["pixel_ap"]  # the candidates are different maps


def test_train_step_times_each_cache_budget_from_the_same_model(tiny_category: Path, tmp_path: Path, monkeypatch):
    """benchmarks/train_step.py on the tiny category: one row per budget, the cache holds every unchanged image
    (normals and seen anomalies) when it fits and none at 0, and the report names the command."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import train_step

    sets = ["data.image_size=64", "data.seen_anomalies=2", "model.encoder.weights=random", "train.batch_size=4"]
    sets += ["model.decoder_channels=[8,8,8]", "train.num_workers=0", "model.kmeans_restarts=1", "data.textures=null"]
    args = ["--data", str(tiny_category), "--config", str(tmp_path / "none.yaml"), "--cache-mb", "0", "64"]
    (tmp_path / "none.yaml").write_text("{}\n")
    args += ["--steps", "2", "--warmup", "1", "--results", str(tmp_path)]
    train_step.main(args + [item for s in sets for item in ("--set", s)])
    data = json.loads((tmp_path / "train_step.json").read_text())
    cached = [row["cached_images"] for row in data["rows"]]
    n_normal = len(list((tiny_category / "train" / "good").iterdir()))
    assert cached == [0, data["unchanged_images"]] and 2 < data["unchanged_images"] <= n_normal + 2
    assert all(row["step_s"] > 0 for row in data["rows"])
    assert "train_step.py" in (tmp_path / "train_step.md").read_text()


def test_calibration_benchmark_measures_every_rule_against_its_promise(tmp_path: Path, monkeypatch):
    import prnad
    from prnad.data import write_tiny_category
    from tests.conftest import tiny_overrides

    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import calibration

    category = write_tiny_category(tmp_path / "tiny", rng=np.random.default_rng(2), size=64, n_train=12, n_good_test=4)
    values = tiny_overrides(category)
    values["model"]["score_bank_size"] = 16
    values["threshold"] = {"holdout_fraction": 0.3, "calibration_anomalies": 6}
    prnad.train(category, tmp_path / "run", overrides=values)
    layout = prnad.layout_set(category, tmp_path / "layout", per_kind=2)
    argv = [str(tmp_path / "run"), "--rules", "balanced", "far0.5", "--layout", str(layout)]
    data = calibration.main([*argv, "--results", str(tmp_path / "results"), "--name", "cal"])
    run = data["runs"][str(tmp_path / "run")]
    fitted = prnad.load(tmp_path / "run_cal", device="cpu").info["thresholds"]
    assert run["held_out_normals"] == 4 and run["out_of_sample"]
    assert run["rules"]["far0.5"]["threshold"] == sorted(fitted["normal_scores"])[2]  # k = ceil(5 * 0.5) = 3
    assert run["rules"]["far0.5"]["promise"]["above"] == 1
    for row in run["rules"].values():
        assert row["good_flagged"] == pytest.approx(100 * row["fp"] / (row["fp"] + row["tn"]))
    assert sorted(run["layout"]["per_type"]) == ["moved", "removed", "rotated"]
    report = (tmp_path / "results" / "cal.md").read_text()
    assert "| far0.5 |" in report and "Layout-anomaly set" in report and data["command"] in report


def test_a_rule_is_chosen_on_the_other_categories(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import calibration

    def run(category: str, shortfalls: dict) -> dict:
        return {
            "category": category,
            "rules": {r: {"f1_best": 100.0, "f1": 100.0 - s, "good_flagged": s} for r, s in shortfalls.items()},
        }

    data = {
        "runs": {
            "a0": run("a", {"x": 1.0, "y": 5.0}),
            "a1": run("a", {"x": 3.0, "y": 5.0}),
            "b0": run("b", {"x": 9.0, "y": 4.0}),
        }
    }
    chosen = calibration.choose_on_the_others(data)
    assert chosen["a"] == {"rule": "y", "shortfall_on_others": 4.0, "shortfall_here": 5.0, "good_flagged_here": 5.0}
    assert (
        chosen["b"]["rule"] == "x"
        and chosen["b"]["shortfall_here"] == 9.0
        and chosen["b"]["shortfall_on_others"] == 2.0
    )


def test_the_defaults_evidence_is_what_the_committed_results_give(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import yaml

    import defaults_evidence

    config = yaml.safe_load((REPO / "benchmarks" / "defaults_evidence.yaml").read_text())
    assert (REPO / "docs" / "defaults-evidence.md").read_text() == defaults_evidence.markdown(config)
    assert defaults_evidence.supported({k: 0.1 for k in defaults_evidence.KEYS})
    assert not defaults_evidence.supported({"image_auroc": 5.0, "pixel_auroc": -0.6, "pro": 1.0, "pixel_ap": 1.0})
    assert not defaults_evidence.supported(None)


def test_the_category_report_says_what_a_line_sees_at_the_thresholds(tmp_path: Path):
    bench = _bench_module()
    at = {
        "image_threshold": 1.5,
        "pixel_threshold": 0.7,
        "image": {"precision": 90.0, "recall": 80.0, "f1": 84.7, "good_flagged": 5.0, "defective_missed": 20.0},
        "pixel": {"precision": 60.0, "recall": 70.0, "f1": 64.6},
    }
    at["image"]["promise"] = {"expected_rate": 0.0455}
    old = {k: dict(v) if isinstance(v, dict) else v for k, v in at.items()}
    for key in ("good_flagged", "defective_missed", "promise"):
        del old["image"][key]  # a run evaluated before evaluate reported them
    runs = {"0": _run(0, None, "c0") | {"at_threshold": at}, "1": _run(1, None, "c1") | {"at_threshold": old}}
    data = {"category": "bottle", "runs": runs, "summary": bench.summarise(runs)}
    data["summary_float32_sigmoid"] = bench.summarise(runs, "metrics_float32_sigmoid")
    bench.write_markdown(tmp_path / "b.md", data)
    text = (tmp_path / "b.md").read_text()
    assert "| 0 | 1.5000 | 90.0 | 80.0 | 84.7 | 5.0 (4.5) | 20.0 | 0.7000 |" in text
    assert "| 1 | 1.5000 | 90.0 | 80.0 | 84.7 | - | - | 0.7000 |" in text


def test_the_results_index_lists_every_report(monkeypatch):
    """benchmarks/results/INDEX.md is what benchmarks/index.py generates from the committed reports now."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import index

    assert (RESULTS / index.INDEX).read_text() == index.index_text(RESULTS)
