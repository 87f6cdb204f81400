"""Decision thresholds: the pure functions against hand-computed cases and scikit-learn, the calibration
that fits them without the test split, and the decisions that predict and evaluate make with them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score, precision_recall_curve, precision_score, recall_score, roc_curve

import prnad
from prnad.cli import main
from prnad.config import build_config
from prnad.errors import ConfigError, DataError
from prnad.thresholds import (
    balanced_threshold,
    conformal_threshold,
    decision_counts,
    f1_optimal_threshold,
    false_alarm_promise,
    false_alarm_threshold,
    precision_recall_f1,
)
from prnad.training import trainer
from prnad.training.calibration import calibration_set, holdout_indices, pixel_threshold
from tests.conftest import tiny_overrides

# ------------------------------------------------------------------------------------------ pure functions


def test_f1_optimal_threshold_by_hand():
    # flag top 1: F1 2/3; top 2: 1/2; top 3 (0.9, 0.4, 0.3): TP 2, FP 1, FN 0 -> 4/5; top 4: 2/3; all: 4/7
    t, f1 = f1_optimal_threshold(np.array([0.1, 0.2, 0.3, 0.4, 0.9]), np.array([0, 0, 1, 0, 1]))
    assert t == pytest.approx(0.25) and f1 == pytest.approx(0.8)


def test_f1_optimal_threshold_separable_sets_take_the_middle_of_the_gap():
    t, f1 = f1_optimal_threshold(np.array([0.1, 0.2, 0.6, 0.8]), np.array([0, 0, 1, 1]))
    assert t == pytest.approx(0.4) and f1 == 1.0


def test_f1_optimal_threshold_when_everything_is_flagged():
    t, f1 = f1_optimal_threshold(np.array([0.3, 0.7]), np.array([1, 1]))
    assert t < 0.3 and f1 == 1.0


@pytest.mark.parametrize("seed", range(5))
def test_f1_optimal_threshold_matches_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 300)
    scores = np.round(rng.normal(labels * 1.0, 1.0), 1)  # rounded: many ties
    t, f1 = f1_optimal_threshold(scores, labels)
    precision, recall, _ = precision_recall_curve(labels, scores)
    with np.errstate(invalid="ignore", divide="ignore"):
        best = np.nanmax(2 * precision * recall / (precision + recall))
    assert f1 == pytest.approx(best, abs=1e-12)
    assert f1_score(labels, scores > t) == pytest.approx(f1, abs=1e-12)  # the threshold gives that F1


def test_balanced_threshold_by_hand():
    # P = 2, N = 3. TPR - FPR: top 1 1/2; top 2 1/2 - 1/3; top 3 (0.9, 0.4, 0.3) 1 - 1/3 = 2/3; top 4 1/3; all 0
    t, j = balanced_threshold(np.array([0.1, 0.2, 0.3, 0.4, 0.9]), np.array([0, 0, 1, 0, 1]))
    assert t == pytest.approx(0.25) and j == pytest.approx(2 / 3)
    # many weak positives do not drag the threshold into the negatives, as F1 does at this class mix
    scores = np.array([0.1, 0.2, 0.3, 0.35, 0.31, 0.32, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9])
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1])
    assert balanced_threshold(scores, labels)[0] > 0.35 > f1_optimal_threshold(scores, labels)[0]


@pytest.mark.parametrize("seed", range(5))
def test_balanced_threshold_matches_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 300)
    scores = np.round(rng.normal(labels * 1.0, 1.0), 1)
    t, j = balanced_threshold(scores, labels)
    fpr, tpr, _ = roc_curve(labels, scores)
    assert j == pytest.approx(np.max(tpr - fpr), abs=1e-12)
    flagged = scores > t
    assert flagged[labels == 1].mean() - flagged[labels == 0].mean() == pytest.approx(j, abs=1e-12)
    with pytest.raises(ValueError, match="no negative"):
        balanced_threshold(np.array([0.2, 0.3]), np.array([1, 1]))


def test_f1_optimal_threshold_refuses_no_anomalies_and_nan():
    with pytest.raises(ValueError, match="no positive"):
        f1_optimal_threshold(np.array([0.1, 0.2]), np.array([0, 0]))
    with pytest.raises(ValueError, match="finite"):
        f1_optimal_threshold(np.array([np.nan, 0.2]), np.array([1, 0]))


def test_false_alarm_threshold_by_hand():
    normal = np.arange(1, 11) / 10  # 0.1 .. 1.0
    assert false_alarm_threshold(normal, 0.1) == pytest.approx(0.9)  # only 1.0 is above
    assert false_alarm_threshold(normal, 0.0) == pytest.approx(1.0)  # nothing above
    assert false_alarm_threshold(normal, 0.25) == pytest.approx(0.8)  # floor(2.5) = 2 above
    assert np.count_nonzero(normal > false_alarm_threshold(normal, 1.0)) == 10
    with pytest.raises(ValueError):
        false_alarm_threshold(normal, 1.5)


@pytest.mark.parametrize("seed", range(3))
def test_decision_counts_match_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    labels, scores = rng.integers(0, 2, 200), rng.random(200)
    counts = decision_counts(scores, labels, 0.6)
    assert sum(counts.values()) == 200
    got = precision_recall_f1(counts)
    predicted = scores > 0.6
    assert got["precision"] == pytest.approx(precision_score(labels, predicted))
    assert got["recall"] == pytest.approx(recall_score(labels, predicted))
    assert got["f1"] == pytest.approx(f1_score(labels, predicted))
    assert precision_recall_f1({"tp": 0, "fp": 0, "fn": 3, "tn": 5}) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}


def test_holdout_indices():
    held = holdout_indices(209, 0.1, 0)
    assert len(held) == 21 and len(set(held)) == 21 and list(held) == sorted(held)
    assert list(holdout_indices(209, 0.1, 0)) == list(held) and list(holdout_indices(209, 0.1, 1)) != list(held)
    assert len(holdout_indices(10, 0.0, 0)) == 0 and len(holdout_indices(3, 0.01, 0)) == 2  # at least 2
    with pytest.raises(ValueError, match="leaves none"):
        holdout_indices(2, 0.01, 0)


def test_conformal_threshold_is_the_kth_smallest():
    normal = np.arange(1.0, 21.0)[::-1]  # 20 scores, 1..20, in any order
    assert conformal_threshold(normal, 0.1) == 19.0  # k = ceil(21 * 0.9) = 19: above it 2 gaps of 21 <= 0.1
    assert conformal_threshold(normal, 0.05) == 20.0  # k = ceil(19.95) = 20
    assert conformal_threshold(normal, 0.01) == 20.0  # k = 21 > n: not promised; the largest
    assert conformal_threshold(normal, 0.5) == 11.0  # k = ceil(10.5) = 11
    for rate in (0.0, 1.0):
        with pytest.raises(ValueError, match="false-alarm rate"):
            conformal_threshold(normal, rate)


def test_false_alarm_promise_counts_and_bounds():
    normal = np.arange(1.0, 21.0)
    promise = false_alarm_promise(normal, 18.5)  # 19 and 20 above: m = 2 of n = 20
    assert promise["above"] == 2 and promise["expected_rate"] == 3 / 21
    from scipy.stats import beta

    assert promise["bound"] == beta.ppf(0.9, 3, 18) and promise["confidence"] == 0.9
    assert false_alarm_promise(normal, 20.0)["bound"] == pytest.approx(1 - 0.1 ** (1 / 20))  # Beta(1, 20)
    assert false_alarm_promise(normal, 0.0)["bound"] == 1.0


def test_the_conformal_promise_holds_on_new_normals():
    """Over many draws of 20 held-out normals, new normals from the same law are flagged at most as often as
    promised, on average (the expected rate) and in 90 % of the draws (the bound)."""
    rng = np.random.default_rng(0)
    rates, bounds = [], []
    for _ in range(2000):
        held, new = rng.standard_normal(20), rng.standard_normal(2000)
        t = conformal_threshold(held, 0.1)
        rates.append(float(np.mean(new > t)))
        bounds.append(false_alarm_promise(held, t)["bound"])
    assert np.mean(rates) <= 2 / 21 + 0.003  # (n + 1 - k) / (n + 1), k = 19
    assert np.mean(np.array(rates) <= np.array(bounds)) >= 0.88


# --------------------------------------------------------------------------------------------- training


def _overrides(root: Path, **threshold: object) -> dict:
    values = tiny_overrides(root)
    values["threshold"] = {"holdout_fraction": 0.2, "calibration_anomalies": 8, **threshold}
    return values


@pytest.fixture(scope="module")
def detector(tiny_category: Path, tmp_path_factory: pytest.TempPathFactory) -> prnad.Detector:
    out = tmp_path_factory.mktemp("thresholds") / "run"
    return prnad.train(tiny_category, out, overrides=_overrides(tiny_category))


def test_training_stores_thresholds_from_held_out_normals(detector: prnad.Detector):
    fitted = detector.info["thresholds"]
    assert detector.info["n_normal"] == 8 and len(detector.info["calibration_normals"]) == 2
    assert all(p.startswith("train/good/") for p in detector.info["calibration_normals"])
    assert len(fitted["normal_scores"]) == 2 and len(fitted["anomaly_scores"]) == 8
    assert detector.image_threshold == fitted["image"] and 0.0 <= detector.pixel_threshold <= 1.0
    # the default: conformal at 0.1, which 2 normals cannot promise (1 / 3 > 0.1): their largest score
    assert (
        fitted["image"] == conformal_threshold(np.array(fitted["normal_scores"]), 0.1) == max(fitted["normal_scores"])
    )
    assert "conformal" in fitted["image_method"] and fitted["promise"]["expected_rate"] == 1 / 3


def test_pixel_threshold_flags_at_most_the_rate_of_held_out_normal_pixels():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5, 10, 10))  # 2 normals (200 pixels), then 3 anomalies
    labels = np.array([0, 0, 1, 1, 1])
    masks = np.zeros((5, 10, 10), dtype=bool)
    masks[2:, :3] = True
    logits[2:, :3] += 10.0  # anomalous pixels far above every normal one
    normal = np.sort(logits[:2].ravel())[::-1]
    t, method = pixel_threshold(logits, masks, labels, 0.02)  # 4 of 200 normal pixels may be flagged
    assert t == normal[4] and np.count_nonzero(logits[:2] > t) == 4 and "0.02" in method
    assert pixel_threshold(logits, masks, labels, 0.0)[0] == normal[0]  # none flagged: the largest
    t, method = pixel_threshold(logits, masks, labels, 0.001)  # 0.2 of a pixel: the largest, and said
    assert t == normal[0] and "too few pixels to resolve it: 200" in method
    t_f1, method = pixel_threshold(logits, masks, labels, None)
    assert t_f1 == f1_optimal_threshold(logits, masks)[0] and "f1" in method


def test_default_pixel_threshold_flags_no_held_out_normal_pixel(detector: prnad.Detector, tiny_category: Path):
    """2 held-out normals of 64x64 px: a rate of 1e-5 allows floor(0.08) = 0 flagged pixels, so the threshold
    is their largest map value (through sigmoid; float32 maps)."""
    held = [tiny_category / rel for rel in detector.info["calibration_normals"]]
    largest = max(float(p.anomaly_map.max()) for p in detector.predict(held))
    assert detector.pixel_threshold == pytest.approx(largest, abs=1e-6)
    assert "1e-05" in detector.info["thresholds"]["pixel_method"]
    assert "too few pixels to resolve it: 8192" in detector.info["thresholds"]["pixel_method"]


def test_calibration_set_is_the_held_out_normals_then_simulated_anomalies(tiny_category: Path):
    config = build_config(_overrides(tiny_category))
    category, seen = trainer.validated_split(config)
    _, calibration, _ = trainer.build_pool(config, category, seen, np.random.default_rng(0))
    images, masks, labels = calibration_set(calibration, config)
    assert images.shape == (2 + 8, 64, 64, 3) and list(labels) == [0, 0] + [1] * 8
    assert not masks[:2].any() and all(m.any() for m in masks[2:])
    again = calibration_set(calibration, config)
    assert np.array_equal(images, again[0]) and np.array_equal(masks, again[1])  # a pure function of the seed


def _replace_held_out_test_images(data: Path, seen: list[str]) -> None:
    """Overwrite every test image and mask that is not a seen anomaly with other pixels (same size)."""
    rng = np.random.default_rng(123)
    for path in sorted((data / "test").rglob("*.png")):
        if path.relative_to(data).as_posix() not in seen:
            pixels = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
            from PIL import Image

            Image.fromarray(pixels).save(path)


def test_training_never_reads_the_held_out_test_split(tiny_category: Path, tmp_path: Path, monkeypatch):
    """The same run on a copy whose held-out test images are replaced gives the same model and thresholds,
    and no image other than the seen anomalies and their masks is opened under test/ or ground_truth/."""
    first = prnad.train(tiny_category, tmp_path / "a", overrides=_overrides(tiny_category))
    seen = first.info["seen_anomalies"]
    copy = tmp_path / "copy"
    shutil.copytree(tiny_category, copy)
    _replace_held_out_test_images(copy, seen)
    opened: list[Path] = []
    real_open = prnad.data.images.Image.open

    def recording_open(path, *args, **kwargs):
        opened.append(Path(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(prnad.data.images.Image, "open", recording_open)
    second = prnad.train(copy, tmp_path / "b", overrides=_overrides(copy))
    assert second.info["thresholds"] == first.info["thresholds"]
    a, b = first.model.state_dict(), second.model.state_dict()
    assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)
    outside_train = {p.relative_to(copy).as_posix() for p in opened if p.parts[-3] != "train"}
    seen_masks = {f"ground_truth/{s.split('/')[1]}/{Path(s).stem}_mask.png" for s in seen}
    assert outside_train and outside_train <= set(seen) | seen_masks


@pytest.mark.parametrize(
    ("criterion", "fit", "method"), [("balanced", balanced_threshold, "TPR - FPR"), ("f1", f1_optimal_threshold, "F1")]
)
def test_a_criterion_at_training_without_a_rate(tiny_category: Path, tmp_path: Path, criterion, fit, method):
    values = _overrides(tiny_category, image_criterion=criterion, max_false_alarm_rate=None)
    run = prnad.train(tiny_category, tmp_path / "run", overrides=values)
    fitted = run.info["thresholds"]
    scores = np.array(fitted["normal_scores"] + fitted["anomaly_scores"])
    labels = np.array([0] * len(fitted["normal_scores"]) + [1] * len(fitted["anomaly_scores"]))
    assert run.image_threshold == pytest.approx(fit(scores, labels)[0])
    assert method in fitted["image_method"]


def test_false_alarm_rate_at_training(tiny_category: Path, tmp_path: Path):
    run = prnad.train(tiny_category, tmp_path / "run", overrides=_overrides(tiny_category, max_false_alarm_rate=0.1))
    fitted = run.info["thresholds"]
    normal = fitted["normal_scores"]
    assert len(normal) == 2 and "conformal" in fitted["image_method"]
    assert run.image_threshold == max(normal)  # 0.1 < 1 / 3: not promised by 2 normals; their largest
    promise = {"normals": 2, "above": 0, "expected_rate": 1 / 3, "bound": 1 - 0.1**0.5, "confidence": 0.9}
    assert fitted["promise"] == pytest.approx(promise)  # Beta(1, 2): P(rate <= x) = 1 - (1 - x)^2
    assert run.false_alarm_threshold(0.5) == max(normal)  # k = ceil(3 * 0.5) = 2: a new normal above it 1 time in 3
    assert run.false_alarm_threshold(0.7) == min(normal)  # k = ceil(3 * 0.3) = 1: 2 times in 3
    assert run.false_alarm_promise(min(normal) - 1)["expected_rate"] == 1.0
    for rate in (0.0, 1.5):
        with pytest.raises(ConfigError, match=r"false-alarm rate must be in \(0, 1\)"):
            run.false_alarm_threshold(rate)
    with pytest.raises(ConfigError, match="max_false_alarm_rate"):
        prnad.make_config(overrides={"threshold": {"max_false_alarm_rate": 0.0}})


def test_too_few_normals_to_hold_out(tiny_category: Path, tmp_path: Path):
    values = _overrides(tiny_category, holdout_fraction=0.95)
    with pytest.raises(DataError, match="leaves none"):
        prnad.train(tiny_category, tmp_path / "run", overrides=values)


# ------------------------------------------------------------------------------------ predict, evaluate


def test_predict_decides_with_the_thresholds(detector: prnad.Detector, tiny_category: Path):
    files = sorted((tiny_category / "test").rglob("*.png"))
    for p in detector.predict(files):
        assert p.is_anomalous == (p.score > detector.image_threshold)
        assert p.mask.shape == p.anomaly_map.shape and np.array_equal(p.mask, p.anomaly_map > detector.pixel_threshold)
    lowest = min(p.score for p in detector.predict(files))
    assert all(p.is_anomalous for p in detector.predict(files, threshold=lowest - 1e-9))
    assert not any(p.mask.any() for p in detector.predict(files, pixel_threshold=1.0))


def test_evaluate_reports_decisions_at_the_thresholds(detector: prnad.Detector):
    result = detector.evaluate()
    at = result["at_threshold"]
    assert at["image_threshold"] == detector.image_threshold
    image = at["image"]
    assert image["tp"] + image["fp"] + image["fn"] + image["tn"] == result["test_images"]
    assert image["tp"] + image["fn"] == result["test_anomalous"]
    assert image["f1"] == pytest.approx(100 * precision_recall_f1(image)["f1"], abs=1e-3)
    assert sum(at["pixel"][k] for k in ("tp", "fp", "fn", "tn")) == result["test_images"] * 64 * 64
    good, bad = image["fp"] + image["tn"], image["tp"] + image["fn"]
    assert image["good_flagged"] == pytest.approx(100 * image["fp"] / good)
    assert image["defective_missed"] == pytest.approx(100 * image["fn"] / bad)
    assert image["f1_best"] >= image["f1"] - 1e-9
    normal = detector.info["thresholds"]["normal_scores"]
    above = sum(s > detector.image_threshold for s in normal)
    assert image["promise"]["above"] == above and image["promise"]["expected_rate"] == (above + 1) / (len(normal) + 1)
    table = prnad.api.format_table(result)
    assert "F1" in table and f"good parts flagged {image['good_flagged']:.1f} % ({image['fp']} of {good})" in table
    assert f"from {len(normal)} held-out normals" in table and "best F1 in hindsight" in table
    assert 0.0 <= at["pixel"]["good_with_mask"] <= 100.0
    largest = detector.info["thresholds"]["normal_largest_pixels"]
    above = sum(v > detector.pixel_threshold for v in largest)
    assert at["pixel"]["promise"]["above"] == above and len(largest) == len(normal)
    assert "good parts with a non-empty mask" in table


def test_a_run_without_held_out_normals_has_no_decisions(tiny_category: Path, tmp_path: Path):
    values = _overrides(tiny_category, holdout_fraction=0.0)
    with pytest.raises(ConfigError, match="model.score_bank_size 0"):  # the default score banks need held-out normals
        prnad.train(tiny_category, tmp_path / "refused", overrides=values)
    values["model"]["score_bank_size"] = 0
    run = prnad.train(tiny_category, tmp_path / "run", overrides=values)
    assert run.image_threshold is None and "thresholds" not in run.info
    p = run.predict(tiny_category / "test" / "good" / "000.png")
    assert p.is_anomalous is None and p.mask is None
    assert run.evaluate()["at_threshold"] is None
    out = tmp_path / "pred"
    list(prnad.predict_folder(run, [tiny_category / "test" / "good"], out))
    assert not list(out.glob("*_mask.png")) and len(list(out.glob("*_overlay.png"))) == 3
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["is_anomalous"] for r in rows] == [None] * 3


def test_calibrate_refits_the_thresholds_of_a_trained_run(tiny_category: Path, tmp_path: Path, capsys):
    values = tiny_overrides(tiny_category)
    values["model"]["score_bank_size"] = 16
    values["threshold"] = {"holdout_fraction": 0.3, "calibration_anomalies": 4}
    trained = prnad.train(tiny_category, tmp_path / "run", overrides=values)
    before = trained.info["thresholds"]
    assert main(["calibrate", str(tmp_path / "run"), "--max-false-alarm-rate", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "new normal images flagged 50.0 % of the time on average" in out and "(3 held-out normals)" in out
    after = prnad.load(tmp_path / "run", device="cpu")
    fitted = after.info["thresholds"]
    assert fitted["normal_scores"] == before["normal_scores"] and fitted["anomaly_scores"] == before["anomaly_scores"]
    assert after.image_threshold == sorted(before["normal_scores"])[1]  # k = ceil(4 * 0.5) = 2
    assert fitted["promise"]["above"] == 1 and after.config.threshold.max_false_alarm_rate == 0.5
    a, b = trained.model.state_dict(), after.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # the network, banks and statistics as trained
    assert main(["calibrate", str(tmp_path / "run"), "--image-criterion", "f1"]) == 0
    refitted = prnad.load(tmp_path / "run", device="cpu")
    assert (
        "F1" in refitted.info["thresholds"]["image_method"] and refitted.config.threshold.max_false_alarm_rate is None
    )
    with pytest.raises(ConfigError, match="keeps the run's held-out normals"):
        prnad.calibrate(tmp_path / "run", {"holdout_fraction": 0.5})
    with pytest.raises(ConfigError, match="max_false_alarm_rate"):
        prnad.calibrate(tmp_path / "run", {"max_false_alarm_rate": 2})


def test_the_calibration_pool_alone_is_build_pools(tiny_config):
    """prnad calibrate reads only the held-out normals: the pool it builds equals the one training built."""
    import numpy as np

    from prnad.training import trainer

    category, seen = trainer.validated_split(tiny_config)
    _, expected, info = trainer.build_pool(tiny_config, category, seen, np.random.default_rng(0))
    alone, held = trainer.calibration_pool(tiny_config, category, seen, info["category_type"], np.random.default_rng(0))
    assert held == info["calibration_normals"]
    for name in ("normals", "foreground", "seen_images", "seen_masks", "textures"):
        np.testing.assert_array_equal(getattr(alone, name), getattr(expected, name))
