"""Experiments from one file: model variants x datasets and categories x seeds, each cell an independent run.

An experiment YAML names its ``variants`` (a preset, a config file and overrides), its ``datasets`` (a folder
holding one sub-folder per category, and the categories to run), its ``seeds``, overrides shared by every
variant (a shorter schedule, say) and, optionally, ``reference`` figures to print beside ours (a published
table). :func:`run_experiment` trains and evaluates every cell that has no record yet and writes one report
per experiment: per dataset a table of the mean and spread over seeds of image AUROC, pixel AUROC, PRO and
pixel AP, the decisions at the fitted thresholds, training minutes and ms per image, in Markdown and JSON.

Where everything goes, below ``out``: ``runs/<variant>/<dataset>/<category>/seed<k>`` (the run folders),
``cells/<cell id>.json`` (one record per finished cell: what the report is made of; a cell with a record is
skipped, so a second call redoes nothing) and ``report.md`` / ``report.json``. A cell without a record whose
run folder holds a finished run of the cell's config is evaluated, not trained (a run killed while it was
evaluated, or a run made by ``prnad train`` and put there); any other is trained again from the start. Cells run one after another (``executor="local"``) or as Ray tasks
(``executor="ray"``: Ray's own scheduling, one cell a task, the records written by the driver as tasks end).
Paths in the file are relative to the current directory, as every prnad path.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from prnad.config import LAYOUTS, PRESETS, build_config, load_yaml, make_config, merge, to_dict, with_absolute_paths
from prnad.errors import ConfigError
from prnad.export import ENGINES

METRICS = ("image_auroc", "pixel_auroc", "pro", "pixel_ap")
METRIC_TITLES = {"image_auroc": "image AUROC", "pixel_auroc": "pixel AUROC", "pro": "PRO", "pixel_ap": "pixel AP"}
EXECUTORS = ("local", "ray")


@dataclass(frozen=True)
class Variant:
    """A model: ``preset`` (a name of :data:`prnad.PRESETS`), then ``config`` (a YAML file), then ``overrides``;
    ``note`` says what it is (for the reader; it changes nothing)."""

    name: str
    preset: str | None = None
    config: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    note: str = ""


@dataclass(frozen=True)
class DatasetSpec:
    """``root``/<category> for each of ``categories``; ``layout`` as ``data.layout`` (None: detected);
    ``overrides`` apply to every cell of this dataset (DRA's hard setting: the seen defect type)."""

    name: str
    root: str
    categories: tuple[str, ...]
    layout: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Experiment:
    """What :func:`load_experiment` reads. ``reference``: {dataset: {category: {metric: value}}} printed beside
    ours, under the name ``reference_name``. ``engines``: every run is evaluated through each (the first gives
    the main table; the others add their metrics and ms per image: the engines' agreement and speed)."""

    name: str
    variants: tuple[Variant, ...]
    datasets: tuple[DatasetSpec, ...]
    seeds: tuple[int, ...]
    overrides: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    reference: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    reference_name: str = "reference"
    engines: tuple[str, ...] = ("torch",)


@dataclass(frozen=True)
class Cell:
    """One run of the experiment: a variant on one category of one dataset with one seed."""

    variant: Variant
    dataset: DatasetSpec
    category: str
    seed: int

    @property
    def id(self) -> str:
        return f"{self.variant.name}__{self.dataset.name}__{self.category}__seed{self.seed}"

    def run_dir(self, out: Path) -> Path:
        return out / "runs" / self.variant.name / self.dataset.name / self.category / f"seed{self.seed}"

    def data(self) -> Path:
        return Path(self.dataset.root) / self.category


def _fields(values: Any, allowed: set[str], required: set[str], where: str) -> dict[str, Any]:
    """``values`` as a mapping with only ``allowed`` keys and every ``required`` one; ConfigError naming ``where``."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(values).__name__}")
    unknown = sorted(set(values) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key '{unknown[0]}' (allowed: {', '.join(sorted(allowed))})")
    missing = sorted(required - set(values))
    if missing:
        raise ConfigError(f"{where}: missing key '{missing[0]}'")
    return values


def _names(items: list, where: str) -> None:
    names = [item.name for item in items]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(f"{where}: the name '{repeated[0]}' is used twice")
    for n in names:
        if not n or "__" in n or "/" in n:
            raise ConfigError(f"{where}: name '{n}' must be non-empty, without '__' or '/'")


def _variant(values: Any, where: str) -> Variant:
    v = _fields(values, {"name", "preset", "config", "overrides", "note"}, {"name"}, where)
    if v.get("preset") is not None and v["preset"] not in PRESETS:
        raise ConfigError(f"{where}: unknown preset '{v['preset']}'; presets: {', '.join(PRESETS)}")
    return Variant(
        str(v["name"]), v.get("preset"), v.get("config"), dict(v.get("overrides") or {}), str(v.get("note") or "")
    )


def _dataset(values: Any, where: str) -> DatasetSpec:
    d = _fields(values, {"name", "root", "categories", "layout", "overrides"}, {"name", "root", "categories"}, where)
    if d.get("layout") is not None and d["layout"] not in LAYOUTS:
        raise ConfigError(f"{where}: unknown layout '{d['layout']}'; layouts: {', '.join(LAYOUTS)}")
    categories = d["categories"]
    if not isinstance(categories, list) or not categories:
        raise ConfigError(f"{where}.categories: expected a non-empty list of category folders")
    categories = tuple(str(c) for c in categories)
    return DatasetSpec(str(d["name"]), str(d["root"]), categories, d.get("layout"), dict(d.get("overrides") or {}))


def parse_experiment(values: dict[str, Any], where: str = "experiment") -> Experiment:
    """An :class:`Experiment` from a nested dict (an experiment file's content); unknown keys are errors."""
    allowed = {"name", "description", "variants", "datasets", "seeds", "overrides", "reference", "reference_name"}
    allowed |= {"engines"}
    e = _fields(values, allowed, {"name", "variants", "datasets", "seeds"}, where)
    for key in ("variants", "datasets", "seeds"):
        if not isinstance(e[key], list) or not e[key]:
            raise ConfigError(f"{where}.{key}: expected a non-empty list")
    variants = tuple(_variant(v, f"{where}.variants[{i}]") for i, v in enumerate(e["variants"]))
    datasets = tuple(_dataset(d, f"{where}.datasets[{i}]") for i, d in enumerate(e["datasets"]))
    _names(list(variants), f"{where}.variants")
    _names(list(datasets), f"{where}.datasets")
    if not all(isinstance(s, int) and not isinstance(s, bool) for s in e["seeds"]):
        raise ConfigError(f"{where}.seeds: expected a list of integers, got {e['seeds']}")
    engines = tuple(e.get("engines") or ("torch",))
    unknown = [x for x in engines if x not in ENGINES]
    if unknown or len(set(engines)) != len(engines):
        raise ConfigError(f"{where}.engines: expected distinct engines among {', '.join(ENGINES)}, got {list(engines)}")
    return Experiment(
        name=str(e["name"]),
        variants=variants,
        datasets=datasets,
        seeds=tuple(e["seeds"]),
        overrides=dict(e.get("overrides") or {}),
        description=str(e.get("description") or ""),
        reference=dict(e.get("reference") or {}),
        reference_name=str(e.get("reference_name") or "reference"),
        engines=engines,
    )


def load_experiment(path: str | Path) -> Experiment:
    """Read an experiment YAML file; errors name the file and the key at fault."""
    return parse_experiment(load_yaml(path), where=str(path))


def cells(experiment: Experiment) -> list[Cell]:
    """Every cell, variants outermost, then datasets, categories and seeds, in the file's order."""
    return [
        Cell(v, d, c, s)
        for v in experiment.variants
        for d in experiment.datasets
        for c in d.categories
        for s in experiment.seeds
    ]


def cell_config(experiment: Experiment, cell: Cell) -> dict[str, Any]:
    """The cell's full run config as a nested dict (checked: unknown keys raise ConfigError)."""
    overrides = merge(merge(experiment.overrides, cell.dataset.overrides), cell.variant.overrides)
    if cell.dataset.layout is not None:
        overrides = merge(overrides, {"data": {"layout": cell.dataset.layout}})
    config = make_config(
        cell.variant.config, preset=cell.variant.preset, data=cell.data(), seed=cell.seed, overrides=overrides
    )
    return to_dict(config)


def _config_hash(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def finished_run(run_dir: Path, config: dict[str, Any]) -> bool:
    """Whether ``run_dir`` holds a finished training of ``config`` (its model file, and the config it recorded,
    with the defaults of fields added since, equal to ``config`` with its data folders made absolute, as
    training records them)."""
    recorded = run_dir / "config.yaml"
    if not (run_dir / "model.safetensors").is_file() or not recorded.is_file():
        return False
    try:
        stored = to_dict(build_config(yaml.safe_load(recorded.read_text())))
    except ConfigError:  # a config of another prnad: not this cell's run
        return False
    return stored == to_dict(with_absolute_paths(make_config(config)))


def run_cell(
    config: dict[str, Any], run_dir: str, engines: tuple[str, ...] = ("torch",), *, train: bool = True
) -> dict[str, Any]:
    """Train ``config`` into ``run_dir`` (from the start: a folder left by a killed run is replaced; ``train``
    False: the folder holds its finished run already), evaluate it on its held-out test split through each of
    ``engines``, and return what the report needs of it. A plain function of plain values, so that a Ray
    worker can run it."""
    started = time.perf_counter()
    if train:
        from prnad.training import train as train_run  # training is imported only by who trains

        train_run(make_config(config), run_dir, overwrite=True, progress=False)
    wall = time.perf_counter() - started
    results = engine_results(run_dir, engines, config["train"]["device"])
    result = results.pop(engines[0])
    image = (result.get("at_threshold") or {}).get("image") or {}
    return {
        "metrics": result["metrics"],
        "per_type": result["per_type"],
        "seen_unseen": result.get("seen_unseen"),
        "decisions": {
            k: image.get(k) for k in ("f1", "f1_best", "precision", "recall", "good_flagged", "defective_missed")
        }
        | {"promised_bound": (image.get("promise") or {}).get("bound")},
        "train_minutes": round(result["train_info"].get("train_seconds", wall) / 60, 2),
        "wall_minutes": round(wall / 60, 2) if train else None,
        "engine": engines[0],
        "ms_per_image": result["inference_ms_per_image"],
        "engines": {name: _engine_entry(r) for name, r in results.items()},
        "device": result["device"],
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores",
        "date": dt.date.today().isoformat(),
        "prnad_version": result["prnad_version"],
    }


def engine_results(run_dir: str | Path, engines: tuple[str, ...], device: str = "auto") -> dict[str, dict[str, Any]]:
    """The evaluation of the run in ``run_dir`` through each of ``engines`` (the exported ones on the CPU)."""
    from prnad.inference import Detector

    return {name: Detector.from_run(run_dir, device=device, engine=name).evaluate() for name in engines}


def _engine_entry(result: dict[str, Any]) -> dict[str, Any]:
    return {"metrics": result["metrics"], "ms_per_image": result["inference_ms_per_image"]}


def _with_engines(record: dict[str, Any], run_dir: Path, engines: tuple[str, ...]) -> dict[str, Any] | None:
    """``record`` completed with the engines it lacks (evaluated here, no training); None if it was made with
    another first engine (its main figures would be another engine's)."""
    if record.get("engine", "torch") != engines[0]:
        return None
    missing = tuple(e for e in engines[1:] if e not in record.get("engines", {}))
    if not missing:
        return record
    added = {name: _engine_entry(r) for name, r in engine_results(run_dir, missing, "cpu").items()}
    return record | {"engines": {**record.get("engines", {}), **added}}


def _record_path(out: Path, cell: Cell) -> Path:
    return out / "cells" / f"{cell.id}.json"


def read_record(out: Path, cell: Cell, config_hash: str) -> dict[str, Any] | None:
    """The finished cell's record, or None when there is none or it was made with another config."""
    path = _record_path(out, cell)
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    return record if record.get("config_hash") == config_hash else None


def write_record(out: Path, cell: Cell, record: dict[str, Any]) -> None:
    """Write a cell's record atomically (a killed process leaves the old file or none, never half of one)."""
    path = _record_path(out, cell)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(path)


def _cell_fields(cell: Cell, config_hash: str) -> dict[str, Any]:
    return {
        "cell": cell.id,
        "variant": cell.variant.name,
        "dataset": cell.dataset.name,
        "category": cell.category,
        "seed": cell.seed,
        "config_hash": config_hash,
    }


@dataclass(frozen=True)
class Todo:
    """A cell to run: its config, that config's hash, and whether its run folder must be trained (False: it
    holds a finished run of that config, which only needs evaluating)."""

    cell: Cell
    config: dict[str, Any]
    config_hash: str
    train: bool


def _run_local(todo: list[Todo], out: Path, log, engines: tuple[str, ...]) -> None:
    for i, t in enumerate(todo, 1):
        log(
            f"benchmark: cell {i}/{len(todo)} {t.cell.id} ({'train and evaluate' if t.train else 'evaluate its run'}) ..."
        )
        record = run_cell(t.config, str(t.cell.run_dir(out)), engines, train=t.train)
        write_record(out, t.cell, _cell_fields(t.cell, t.config_hash) | record)


def _run_ray(todo: list[Todo], out: Path, log, engines: tuple[str, ...], address: str | None, cpus: float) -> None:
    try:
        import ray
    except ImportError as exc:
        raise ConfigError("executor 'ray' needs Ray: pip install 'prnad[cluster]'") from exc
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        task = ray.remote(num_cpus=cpus, max_retries=0)(run_cell)
        pending = {task.remote(t.config, str(t.cell.run_dir(out)), engines, train=t.train): t for t in todo}
        log(f"benchmark: {len(pending)} cells submitted to Ray ({ray.cluster_resources().get('CPU', 0):g} CPUs)")
        while pending:
            [done], _ = ray.wait(list(pending), num_returns=1)
            t = pending.pop(done)
            write_record(out, t.cell, _cell_fields(t.cell, t.config_hash) | ray.get(done))
            log(f"benchmark: {t.cell.id} done, {len(pending)} to go")
    finally:
        if started_here:
            ray.shutdown()


def run_experiment(
    experiment: Experiment | str | Path,
    out: str | Path | None = None,
    *,
    report: str | Path | None = None,
    executor: str = "local",
    address: str | None = None,
    cpus_per_cell: float = 1,
    command: str | None = None,
    log=print,
) -> dict[str, Any]:
    """Run every cell of ``experiment`` (an :class:`Experiment` or its YAML file) that has no record in ``out``
    (default ``runs/<experiment name>``), then write the report (``report.md`` and ``report.json`` in
    ``report``, default ``out``) and return its content. ``executor``: ``local`` (one cell after another, here)
    or ``ray`` (tasks of ``cpus_per_cell`` CPUs on the cluster at ``address``; None starts a local Ray).
    Every cell's config is built and checked before the first run. ``command``: how this was called, for the
    report."""
    if not isinstance(experiment, Experiment):
        experiment = load_experiment(experiment)
    if executor not in EXECUTORS:
        raise ConfigError(f"unknown executor '{executor}'; executors: {', '.join(EXECUTORS)}")
    out = Path(out or Path("runs") / experiment.name)
    planned = []
    for cell in cells(experiment):
        config = cell_config(experiment, cell)
        planned.append((cell, config, _config_hash(config)))
    engines = experiment.engines
    todo = []
    for cell, config, config_hash in planned:
        record = read_record(out, cell, config_hash)
        completed = None if record is None else _with_engines(record, cell.run_dir(out), engines)
        if completed is None:
            todo.append(Todo(cell, config, config_hash, not finished_run(cell.run_dir(out), config)))
        elif completed is not record:
            write_record(out, cell, completed)
    log(f"benchmark {experiment.name}: {len(planned)} cells, {len(planned) - len(todo)} already done")
    if todo and executor == "local":
        _run_local(todo, out, log, engines)
    elif todo:
        _run_ray(todo, out, log, engines, address, cpus_per_cell)
    records = [read_record(out, c, h) for c, _, h in planned]
    data = summarise(experiment, [r for r in records if r is not None], command)
    write_report(Path(report or out), data)
    return data


def _spread(values: list[float]) -> dict[str, float | None]:
    return {
        "mean": round(statistics.fmean(values), 4),
        "std": round(statistics.stdev(values), 4) if len(values) > 1 else None,
        "min": min(values),
        "max": max(values),
    }


def _spreads(values: list[dict[str, Any]], keys: tuple[str, ...]) -> dict[str, dict[str, float | None] | None]:
    """Per key, the spread of its values over the dicts ``values`` that hold one (None where none does)."""
    out = {}
    for key in keys:
        present = [v[key] for v in values if v.get(key) is not None]
        out[key] = _spread(present) if present else None
    return out


DECISIONS = ("f1", "f1_best", "good_flagged", "defective_missed", "promised_bound")


def _summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and spread over seeds of the metrics, decisions and times of one variant on one category, and of
    each further engine's metrics and times."""
    out: dict[str, Any] = {"seeds": sorted(r["seed"] for r in records)}
    out |= _spreads([r["metrics"] for r in records], METRICS) | _spreads([r["decisions"] for r in records], DECISIONS)
    out |= _spreads(records, ("train_minutes", "ms_per_image"))
    out["engines"] = {}
    for name in sorted({n for r in records for n in r.get("engines", {})}):
        entries = [r["engines"][name] for r in records if name in r.get("engines", {})]
        out["engines"][name] = _spreads([e["metrics"] for e in entries], METRICS) | _spreads(entries, ("ms_per_image",))
    return out


def summarise(experiment: Experiment, records: list[dict[str, Any]], command: str | None = None) -> dict[str, Any]:
    """The report's content: per dataset, per category, per variant the summary over seeds, and every record."""
    tables: dict[str, Any] = {}
    for d in experiment.datasets:
        tables[d.name] = {}
        for c in d.categories:
            row = {}
            for v in experiment.variants:
                mine = [r for r in records if (r["dataset"], r["category"], r["variant"]) == (d.name, c, v.name)]
                if mine:
                    row[v.name] = _summary(mine)
            tables[d.name][c] = row
    return {
        "experiment": experiment.name,
        "description": experiment.description,
        "variants": [to_dict(v) for v in experiment.variants],
        "seeds": list(experiment.seeds),
        "overrides": experiment.overrides,
        "reference_name": experiment.reference_name,
        "reference": experiment.reference,
        "engines": list(experiment.engines),
        "tables": tables,
        "cells": sorted(records, key=lambda r: r["cell"]),
        "command": command,
        "date": dt.date.today().isoformat(),
    }


def _mean_sd(s: dict[str, Any] | None) -> str:
    if s is None:
        return "-"
    return f"{s['mean']:.2f}" + ("" if s["std"] is None else f" ± {s['std']:.2f}")


def _decision_cell(s: dict[str, Any]) -> str:
    if s.get("f1") is None:
        return "-"
    flagged = "-" if s.get("good_flagged") is None else f"{s['good_flagged']['mean']:.1f}"
    bound = "-" if s.get("promised_bound") is None else f"{100 * s['promised_bound']['mean']:.1f}"
    return f"{s['f1']['mean']:.1f} / {s['f1_best']['mean']:.1f} / {flagged} ({bound})"


def table_lines(data: dict[str, Any], dataset: str) -> list[str]:
    """The Markdown table of one dataset: a row per category and variant (and the reference's figures)."""
    head = ["category", "model", *(METRIC_TITLES[m] for m in METRICS), "F1 / best F1 / good flagged % (bound)"]
    head += ["seeds", "train min", "ms / image"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    reference = data["reference"].get(dataset, {})
    for category, row in data["tables"][dataset].items():
        for variant, s in row.items():
            cells_ = [category, variant, *(_mean_sd(s[m]) for m in METRICS), _decision_cell(s)]
            cells_ += [",".join(str(k) for k in s["seeds"]), _mean_sd(s["train_minutes"]), _mean_sd(s["ms_per_image"])]
            lines.append("| " + " | ".join(cells_) + " |")
        if category in reference:
            ref = [f"{reference[category][m]:g}" if m in reference[category] else "-" for m in METRICS]
            lines.append("| " + " | ".join([category, data["reference_name"], *ref, "-", "-", "-", "-"]) + " |")
    return lines


def engine_lines(data: dict[str, Any], dataset: str) -> list[str]:
    """The engines table of one dataset: per category and variant, each engine's metrics (mean over seeds) and
    ms per image; empty with one engine."""
    engines = data.get("engines", ["torch"])
    if len(engines) < 2:
        return []
    head = ["category", "model", "engine", *(METRIC_TITLES[m] for m in METRICS), "ms / image"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for category, row in data["tables"][dataset].items():
        for variant, s in row.items():
            for name in engines:
                e = s if name == engines[0] else s["engines"].get(name)
                if e is None:
                    continue
                cells_ = [category, variant, name, *(_mean_sd(e[m]) for m in METRICS), _mean_sd(e["ms_per_image"])]
                lines.append("| " + " | ".join(cells_) + " |")
    return ["Engines (the same runs through each engine):", "", *lines, ""]


def seen_unseen_lines(data: dict[str, Any]) -> list[str]:
    """Per run whose seen anomalies came from some defect types only, the metrics on the seen and the unseen
    types (each against all normal test images); empty when no run has them."""
    rows = [r for r in data["cells"] if r.get("seen_unseen")]
    if not rows:
        return []
    head = ["run", "types", *(METRIC_TITLES[m] for m in METRICS)]
    lines = ["Seen and unseen defect types:", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        for group, m in r["seen_unseen"].items():
            values = ["-" if m[k] is None else f"{m[k]:.2f}" for k in METRICS]
            name = f"{group.split('_')[0]}: {', '.join(m['types'])}"
            lines.append("| " + " | ".join([r["cell"], name, *values]) + " |")
    return [*lines, ""]


def markdown(data: dict[str, Any]) -> str:
    lines = [f"# {data['experiment']}", ""]
    if data["description"]:
        lines += [data["description"].strip(), ""]
    lines += [
        f"Seeds {', '.join(str(s) for s in data['seeds'])}; shared overrides: {json.dumps(data['overrides'])}; "
        f"written {data['date']}" + (f" by `{data['command']}`" if data["command"] else "") + ".",
        "Metrics in percent, mean ± standard deviation over seeds. Decisions at the run's fitted thresholds: image "
        "F1, the best F1 any threshold gives in hindsight, the share of good test parts flagged and the bound the "
        "run promised for it (90 % confidence).",
        "",
    ]
    for dataset in data["tables"]:
        lines += [f"## {dataset}", "", *table_lines(data, dataset), "", *engine_lines(data, dataset)]
    lines += seen_unseen_lines(data)
    machines = sorted({f"{r['machine']}, {r['device']}" for r in data["cells"]})
    lines += ["Machines: " + "; ".join(machines) + ".", ""]
    return "\n".join(lines)


def write_report(folder: Path, data: dict[str, Any]) -> None:
    """``report.json`` (everything) and ``report.md`` (the tables) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(json.dumps(data, indent=1))
    (folder / "report.md").write_text(markdown(data))


def write_experiment(path: str | Path, experiment: Experiment) -> Path:
    """Write ``experiment`` as a YAML file that :func:`load_experiment` reads back equal."""
    path = Path(path)
    values = to_dict(experiment)
    values["variants"] = [{k: v for k, v in to_dict(x).items() if v not in (None, {}, "")} for x in experiment.variants]
    values["datasets"] = [{k: v for k, v in to_dict(x).items() if v not in (None, {})} for x in experiment.datasets]
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    return path
