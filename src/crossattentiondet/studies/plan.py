"""Expanding a study spec into configurations and runs: ids, resolved configs, phase selection.

A configuration is a point of the study (``exp_003_s3_t0.5``, ``baseline``, ``mit_b2``); a run is a
configuration x a seed, trained in ``<study_dir>/<config id>/seed<k>/`` (with ``split_seeds`` in the spec:
a configuration x a split seed x a seed, in ``<config id>/split<j>_seed<k>/``, trained with
``data.split.seed=j``). The matched baseline is phase 0
(or, for studies whose baseline is one of their points, that point). A phase that selects from an earlier
one is "pending" until every run of that phase has finished: its configurations are then known and are
listed with placeholders (``exp_008_s?_t0.3``), so their number is known in advance.

The selection ranks the source phase's configurations by the mean over seeds of a VALIDATION metric
(``final_results.json["validation"]``; test results never enter) and is recorded in
``selection_phase<k>.json`` the first time it is made, so it never changes afterwards.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import math
import os
import re
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crossattentiondet.config import (
    ConfigError,
    ExperimentConfig,
    build_config,
    config_to_dict,
    diff_configs,
    parse_override,
    read_config_tree,
    resolve_config_path,
    set_dotted,
)
from crossattentiondet.io import json_safe, read_json
from crossattentiondet.studies.builtin import QUICK_FORCED, QUICK_OVERRIDES
from crossattentiondet.studies.spec import NAME_PATTERN, StudySpec
from crossattentiondet.studies.state import RunState, read_run_state

BASELINE_ID = "baseline"
# keys a run's identity sets; they never count as "changes" and may differ between invocations
IDENTITY_KEYS = ("name", "seed", "output.root", "data.synthetic.cache_dir")


@dataclass
class StudySettings:
    """How a spec is run: seeds, extra overrides of the base config, --quick, another base, output folder."""

    seeds: list[int] | None = None  # None: the spec's seeds
    overrides: list[str] = field(default_factory=list)  # dotted key=value, applied after every configuration's own
    quick: bool = False
    base: str | None = None  # replaces the spec's base config (e.g. preset:recipe_cssa_a100)
    output: Path | None = None  # study directory; default studies/<name>[-quick]
    select_with_missing: bool = False  # rank a phase on the seeds that finished (failed runs excluded)

    def to_dict(self) -> dict[str, Any]:
        return {"seeds": self.seeds, "overrides": list(self.overrides), "quick": self.quick, "base": self.base,
                "select_with_missing": self.select_with_missing}


@dataclass
class Configuration:
    """One configuration of a study (all seeds of it share its id and config)."""

    id: str
    phase: int  # 0: the matched baseline; 1..: the spec's phases
    phase_name: str
    point: dict[str, Any]  # dotted changes to the study base that define it (known part when pending)
    number: int | None = None  # {n} of the id format
    parent: str | None = None  # the selected configuration it builds on
    pending: bool = False  # its phase awaits the selection of an earlier phase
    config: ExperimentConfig | None = None  # resolved, without the run identity (None when pending)
    changes: dict[str, Any] = field(default_factory=dict)  # dotted keys differing from the study base


def run_name(seed: int, split_seed: int | None = None) -> str:
    """The folder of a run in its configuration's folder: ``seed<k>``, or ``split<j>_seed<k>`` with split seeds."""
    return f"seed{seed}" if split_seed is None else f"split{split_seed}_seed{seed}"


@dataclass
class PlannedRun:
    """One run: a configuration x a seed (x a split seed, when the study has split seeds)."""

    configuration: Configuration
    seed: int
    run_dir: Path | None  # None while pending selection
    split_seed: int | None = None  # data.split.seed of this run; None: the configuration's own

    @property
    def config_id(self) -> str:
        return self.configuration.id

    @property
    def name(self) -> str:
        return run_name(self.seed, self.split_seed)

    @property
    def key(self) -> str:
        return f"{self.configuration.id}/{self.name}"

    @property
    def pending(self) -> bool:
        return self.configuration.pending

    def state(self) -> RunState:
        return read_run_state(self.run_dir)


@dataclass
class Selection:
    """The configurations a phase builds on, and the ranking they were chosen from."""

    phase: int
    source_phase: int
    metric: str
    mode: str
    top_k: int
    # {id, mean, std, n, values{seed (split<j>_seed<k> with split seeds): value}}, best first
    ranking: list[dict[str, Any]]
    selected: list[str]
    missing: list[str] = field(default_factory=list)  # runs left out (--select-with-missing)
    recorded: bool = False  # read from / written to selection_phase<k>.json

    def to_dict(self) -> dict[str, Any]:
        return {"phase": self.phase, "source_phase": self.source_phase, "metric": f"validation.{self.metric}",
                "mode": self.mode, "top_k": self.top_k, "selected": self.selected, "ranking": self.ranking,
                "missing": self.missing, "created": time.strftime("%Y-%m-%d %H:%M:%S")}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Selection:
        return cls(phase=int(data["phase"]), source_phase=int(data["source_phase"]),
                   metric=str(data["metric"]).removeprefix("validation."), mode=str(data.get("mode", "max")),
                   top_k=int(data["top_k"]), ranking=list(data.get("ranking", [])),
                   selected=[str(s) for s in data["selected"]], missing=list(data.get("missing", [])),
                   recorded=True)


@dataclass
class StudyPlan:
    """Every configuration and run of a study in one directory, as far as it is known now."""

    spec: StudySpec
    settings: StudySettings
    study_dir: Path
    seeds: list[int]
    base_config: ExperimentConfig  # the study base (spec base + set + quick + overrides), no configuration
    configurations: list[Configuration]
    baseline_id: str | None
    selections: dict[int, Selection] = field(default_factory=dict)
    waiting: dict[int, str] = field(default_factory=dict)  # pending phase -> why it waits
    split_seeds: list[int] | None = None  # None: every run uses its configuration's data.split.seed

    def replicates(self) -> list[tuple[int | None, int]]:
        """(split seed or None, seed) of every run of one configuration, in run order."""
        return [(split, seed) for split in (self.split_seeds or [None]) for seed in self.seeds]

    def configuration(self, config_id: str) -> Configuration:
        for c in self.configurations:
            if c.id == config_id:
                return c
        raise KeyError(config_id)

    def runs(self) -> list[PlannedRun]:
        """Every run, configuration by configuration (pending ones without a directory)."""
        return [PlannedRun(c, seed, None if c.pending else self.study_dir / c.id / run_name(seed, split), split)
                for c in self.configurations for split, seed in self.replicates()]

    def phase_names(self) -> dict[int, str]:
        names = {p: n for p, n in ((c.phase, c.phase_name) for c in self.configurations)}
        names.update({i: p.name for i, p in enumerate(self.spec.phases, start=1)})
        return dict(sorted(names.items()))

    def run_config(self, run: PlannedRun) -> dict[str, Any]:
        """The config mapping the runner writes to ``study_config.yaml`` for ``run``."""
        configuration = run.configuration
        if configuration.config is None or run.run_dir is None:
            raise ConfigError(f"{run.key} awaits the selection of an earlier phase")
        tree = config_to_dict(configuration.config)
        root = self.study_dir.resolve()
        tree["name"] = run.name
        tree["seed"] = run.seed
        if run.split_seed is not None:
            tree["data"]["split"]["seed"] = run.split_seed
        tree["output"]["root"] = str(root / configuration.id)
        synthetic = tree["data"]["synthetic"]
        if tree["data"]["root"] is None and synthetic["cache_dir"] is None:
            # one synthetic data set for the whole study instead of one per configuration folder
            key = json.dumps({k: synthetic[k] for k in ("images", "size", "classes", "seed")}, sort_keys=True)
            synthetic["cache_dir"] = str(root / "_synthetic" / hashlib.sha1(key.encode()).hexdigest()[:12])
        return tree


# ----------------------------------------------------------------------------------------------- resolving
def default_study_dir(spec: StudySpec, quick: bool = False) -> Path:
    """``studies/<name>`` (``studies/<name>-quick`` with --quick, so quick runs never mix with real ones)."""
    return Path("studies") / (spec.name + ("-quick" if quick else ""))


def _get_dotted(tree: Any, key: str) -> Any:
    node = tree
    for part in key.split("."):
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


def check_key(tree: dict[str, Any], key: str, where: str) -> None:
    """Raise a one-line ConfigError when ``key`` (dotted) is not a key of the config ``tree``."""
    node: Any = tree
    parts = key.split(".")
    for i, part in enumerate(parts):
        if isinstance(node, dict):
            if part in node or (node == {} and i > 0):  # an empty mapping field (per_stage) takes any key
                node = node.get(part)
                continue
            match = difflib.get_close_matches(part, [str(k) for k in node], n=1, cutoff=0.6)
            prefix = ".".join(parts[:i])
            hint = f" (did you mean '{prefix + '.' if prefix else ''}{match[0]}'?)" if match else ""
            raise ConfigError(f"{where}: '{key}' is not a config key{hint}")
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"{where}: '{key}': {part!r} is not an index of a list of {len(node)}")
            node = node[int(part)]
            continue
        raise ConfigError(f"{where}: '{key}': '{'.'.join(parts[:i])}' is a value, not a section")


def _one_line(err: ConfigError) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return "; ".join(lines[1:] if len(lines) > 1 and lines[0].startswith("invalid config") else lines)


class _Resolver:
    """Builds validated configs: base + spec.set + a configuration's changes + quick + overrides."""

    def __init__(self, spec: StudySpec, settings: StudySettings) -> None:
        self.spec = spec
        base = settings.base if settings.base is not None else spec.base
        raw: dict[str, Any]
        if base is None:
            raw = {}
        elif isinstance(base, dict):
            raw = copy.deepcopy(base)
            if "base" in raw:  # an inline mapping may itself build on a file or preset
                parent = read_config_tree(resolve_config_path(raw.pop("base"), relative_to=spec.source_dir))
                raw = _merge(parent, raw)
        else:
            raw = read_config_tree(resolve_config_path(base, relative_to=spec.source_dir))
        try:
            defaults = config_to_dict(build_config(raw, source=f"base of study '{spec.name}'"))
        except ConfigError as err:
            raise ConfigError(f"study '{spec.name}': base config: {_one_line(err)}") from None
        self.tree = self._apply(defaults, spec.set, "set")
        late: list[tuple[str, Any, str]] = []
        for where, texts in (("--quick", QUICK_OVERRIDES if settings.quick else []),
                             ("override", settings.overrides)):
            for text in texts:
                path, value = parse_override(text)
                key = ".".join(path)
                check_key(self.tree, key, f"{where} {text!r}")
                late.append((key, value, where))
        self.late = late

    def _apply(self, tree: dict[str, Any], changes: dict[str, Any], where: str) -> dict[str, Any]:
        out = copy.deepcopy(tree)
        for key, value in changes.items():
            check_key(out, str(key), where)
            set_dotted(out, str(key).split("."), copy.deepcopy(value))
        return out

    def resolve(self, point: dict[str, Any], where: str) -> ExperimentConfig:
        tree = self._apply(self.tree, point, where)
        for key, value, origin in self.late:
            if origin == "--quick" and key not in QUICK_FORCED and _touches(point, key):
                continue  # what the study varies survives --quick (else its configurations would coincide)
            set_dotted(tree, key.split("."), copy.deepcopy(value))
        try:
            return build_config(tree)
        except ConfigError as err:
            raise ConfigError(f"study '{self.spec.name}', {where}: {_one_line(err)}") from None


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


# --------------------------------------------------------------------------------------------------- ids
class _Unknown:
    """An id field that depends on a selection not made yet: always formats as '?'."""

    def __format__(self, spec: str) -> str:
        return "?"


def _id_value(value: Any) -> Any:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (list, tuple)):
        return "".join(str(_id_value(v)) for v in value)
    if value is None:
        return "none"
    return value


def render_id(spec: StudySpec, number: int, config: dict[str, Any] | None, unknown: set[str] | None = None) -> str:
    """The id of configuration ``number`` from ``spec.id_format``; fields in ``unknown`` show as '?'."""
    fields: dict[str, Any] = {"n": number}
    for name, key in spec.id_fields.items():
        fields[name] = _Unknown() if config is None or name in (unknown or set()) else _id_value(_get_dotted(config, key))
    try:
        return spec.id_format.format(**fields)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"study spec '{spec.name}': id_format {spec.id_format!r} cannot format {fields}: {err}") from None


# ---------------------------------------------------------------------------------------------- selection
def _touches(point: dict[str, Any], key: str) -> bool:
    """Whether a configuration's changes set ``key``, a key above it or a key below it."""
    return any(k == key or key.startswith(f"{k}.") or str(k).startswith(f"{key}.") for k in map(str, point))


def selection_path(study_dir: Path, phase: int) -> Path:
    return study_dir / f"selection_phase{phase}.json"


def _record_once(path: Path, data: dict[str, Any]) -> bool:
    """Write ``path`` only if it does not exist (atomic: link a complete temporary file into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(json_safe(data), f, indent=2)
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)


def validation_value(final: dict[str, Any], metric: str) -> float | None:
    """``final_results.json["validation"][metric]`` as a finite float, or None."""
    value = (final.get("validation") or {}).get(metric)
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _select(spec: StudySpec, phase: int, candidates: list[Configuration], replicates: list[tuple[int | None, int]],
            study_dir: Path, *, record: bool, allow_missing: bool) -> tuple[Selection | None, str]:
    select = spec.phases[phase - 1].select
    assert select is not None
    source = spec.source_phase(phase)
    source_name = spec.phases[source - 1].name
    path = selection_path(study_dir, phase)
    ids = [c.id for c in candidates]
    if path.is_file():
        selection = Selection.from_dict(read_json(path))
        stray = [s for s in selection.selected if s not in ids]
        if stray:
            raise ConfigError(f"{path} selects {stray}, which phase '{source_name}' no longer has (did the spec "
                              "change? use another --output, or delete the file to select again)")
        return selection, ""
    rows, missing, no_metric = [], [], []
    states = {(c.id, split, seed): read_run_state(study_dir / c.id / run_name(seed, split))
              for c in candidates for split, seed in replicates}
    # the spec's default metric stands for the runs' primary one (segmentation: Smeasure / mIoU)
    metric, mode = select.resolve([s.final for s in states.values() if s.status == "finished" and s.final])
    for c in candidates:
        values: dict[str, float] = {}
        for split, seed in replicates:
            name = run_name(seed, split)
            state = states[(c.id, split, seed)]
            if state.status != "finished" or state.final is None:
                missing.append(f"{c.id}/{name} ({state.status})")
                continue
            value = validation_value(state.final, metric)
            if value is None:
                no_metric.append(f"{c.id}/{name}")
            else:
                values[str(seed) if split is None else name] = value
        vals = list(values.values())
        rows.append({"id": c.id, "mean": statistics.fmean(vals) if vals else None,
                     "std": statistics.stdev(vals) if len(vals) > 1 else None, "n": len(vals), "values": values})
    total = len(candidates) * len(replicates)
    if no_metric:
        return None, (f"{len(no_metric)} finished run(s) of phase '{source_name}' have no validation "
                      f"'{metric}' (e.g. {no_metric[0]}); selection needs a validation split "
                      "(data.split.val > 0)")
    if missing and not allow_missing:
        failed = [m for m in missing if m.endswith("(failed)")]
        why = f"waiting for {len(missing)} of {total} runs of phase '{source_name}'"
        if failed:
            why += (f"; {len(failed)} failed ({', '.join(f.split(' ')[0] for f in failed[:3])}"
                    f"{'...' if len(failed) > 3 else ''}): failed runs count as missing; `cadet study run` "
                    "retries them, --select-with-missing ranks on the seeds that finished")
        return None, why
    ranked = [r for r in rows if r["n"] > 0]
    ranked.sort(key=lambda r: r["mean"], reverse=mode == "max")  # stable: ties keep spec order
    if len(ranked) < select.top_k:
        return None, f"only {len(ranked)} configuration(s) of phase '{source_name}' have results; top_k is {select.top_k}"
    selection = Selection(phase=phase, source_phase=source, metric=metric, mode=mode,
                          top_k=select.top_k, ranking=ranked, selected=[r["id"] for r in ranked[: select.top_k]],
                          missing=missing)
    if record:
        if not _record_once(path, selection.to_dict()):
            selection = Selection.from_dict(read_json(path))  # another study process recorded it first
        selection.recorded = True
    return selection, ""


# --------------------------------------------------------------------------------------------- the plan
def _same(a: ExperimentConfig, b: ExperimentConfig) -> bool:
    return config_to_dict(a) == config_to_dict(b)


def build_plan(spec: StudySpec, settings: StudySettings | None = None, *, record_selection: bool = False) -> StudyPlan:
    """Expand ``spec`` into configurations and runs; selections are made when their source phase is
    complete (and recorded if ``record_selection``; ``cadet study run`` records, plan/status only look)."""
    settings = settings or StudySettings()
    study_dir = Path(settings.output) if settings.output is not None else default_study_dir(spec, settings.quick)
    seeds = list(settings.seeds) if settings.seeds else spec.seed_list()
    if len(set(seeds)) != len(seeds) or any(s < 0 for s in seeds):
        raise ConfigError(f"seeds must be distinct non-negative integers, got {seeds}")
    split_seeds = spec.split_seed_list()
    replicates = [(split, seed) for split in (split_seeds or [None]) for seed in seeds]
    resolver = _Resolver(spec, settings)
    base_config = resolver.resolve({}, "base")

    def make(cid: str, phase: int, phase_name: str, point: dict[str, Any], where: str,
             config: ExperimentConfig | None = None, **extra: Any) -> Configuration:
        config = config if config is not None else resolver.resolve(point, where)
        changes = {k: v for k, v in diff_configs(base_config, config).items() if not k.startswith(IDENTITY_KEYS)}
        return Configuration(cid, phase, phase_name, dict(point), config=config, changes=changes, **extra)

    for name, key in spec.id_fields.items():
        check_key(config_to_dict(base_config), key, f"id_fields.{name}")
    configurations: list[Configuration] = []
    if isinstance(spec.baseline, dict):
        configurations.append(make(BASELINE_ID, 0, "baseline", spec.baseline, "baseline"))
    by_phase: dict[int, list[Configuration]] = {}
    selections: dict[int, Selection] = {}
    waiting: dict[int, str] = {}
    number = 0
    for index, phase in enumerate(spec.phases, start=1):
        items: list[Configuration] = []
        if phase.select is None:
            for j, (explicit_id, point) in enumerate(phase.grid()):
                number += 1
                where = f"phases[{index - 1}] ({phase.name}) point {j + 1}"
                config = resolver.resolve(point, where)
                cid = explicit_id or render_id(spec, number, config_to_dict(config))
                items.append(make(cid, index, phase.name, point, where, config, number=number))
        else:
            source = spec.source_phase(index)
            candidates = by_phase[source]
            if phase.select.top_k > len(candidates):
                raise ConfigError(f"study spec '{spec.name}': phases[{index - 1}].select.top_k: {phase.select.top_k} "
                                  f"is more than the {len(candidates)} configurations of phase "
                                  f"'{spec.phases[source - 1].name}'")
            selection, why = (None, f"waiting for phase '{spec.phases[source - 1].name}' to be selected") \
                if any(c.pending for c in candidates) else \
                _select(spec, index, candidates, replicates, study_dir, record=record_selection,
                        allow_missing=settings.select_with_missing)
            if selection is not None:
                selections[index] = selection
                items, number = _expand_selected(spec, index, phase, selection, candidates, number, make, resolver)
            else:
                waiting[index] = why
                items, number = _expand_pending(spec, index, phase, candidates, number, resolver)
        by_phase[index] = items
        configurations.extend(items)
    baseline_id = _baseline_id(spec, configurations)
    _check_distinct(spec, configurations)
    if split_seeds is not None:
        _check_split_seeds(spec, configurations)
    return StudyPlan(spec, settings, study_dir, seeds, base_config, configurations, baseline_id, selections, waiting,
                     split_seeds)


def _check_split_seeds(spec: StudySpec, configurations: list[Configuration]) -> None:
    """split_seeds sets data.split.seed per run: a configuration may not vary it, and split files ignore it."""
    for c in configurations:
        if "data.split.seed" in c.changes or _touches(c.point, "data.split.seed"):
            raise ConfigError(f"study spec '{spec.name}': configuration '{c.id}' sets data.split.seed, which "
                              "split_seeds sets for every run; vary one or the other")
        split = c.config.data.split if c.config is not None else None
        if split is not None and (split.train_file or split.val_file or split.test_file):
            raise ConfigError(f"study spec '{spec.name}': split_seeds has no effect on configuration '{c.id}', "
                              "whose splits come from data.split.*_file; remove split_seeds or the split files")


def _expand_selected(spec: StudySpec, index: int, phase: Any, selection: Selection, candidates: list[Configuration],
                     number: int, make: Any, resolver: _Resolver) -> tuple[list[Configuration], int]:
    items = []
    by_id = {c.id: c for c in candidates}
    for parent_id in selection.selected:
        parent = by_id[parent_id]
        assert parent.config is not None
        for j, (_, grid_point) in enumerate(phase.grid()):
            point = {**parent.point, **grid_point}
            where = f"phases[{index - 1}] ({phase.name}) point {j + 1} of {parent_id}"
            config = resolver.resolve(point, where)
            if phase.exclude_parent and _same(config, parent.config):
                continue  # this grid point is the parent itself, already run in its phase
            number += 1
            cid = render_id(spec, number, config_to_dict(config))
            items.append(make(cid, index, phase.name, point, where, config, number=number, parent=parent_id))
    return items, number


def _expand_pending(spec: StudySpec, index: int, phase: Any, candidates: list[Configuration], number: int,
                    resolver: _Resolver) -> tuple[list[Configuration], int]:
    """Placeholders for a phase whose parents are not chosen yet: the grid around each of the top_k slots.

    A grid point is left out when it equals every possible parent (exclude_parent); an id field shows '?'
    when its value depends on which parent is chosen."""
    assert phase.select is not None
    grid = phase.grid()
    known = [c for c in candidates if c.config is not None]
    keep: list[int] = []
    unknown_fields: list[set[str]] = []
    samples: list[dict[str, Any] | None] = []  # the grid point applied to one candidate: its known id fields
    for j, (_, grid_point) in enumerate(grid):
        variants = [resolver.resolve({**c.point, **grid_point}, f"phases[{index - 1}] ({phase.name}) point {j + 1}")
                    for c in known]
        if phase.exclude_parent and known and all(_same(v, c.config) for v, c in zip(variants, known) if c.config):
            continue
        keep.append(j)
        trees = [config_to_dict(v) for v in variants]
        samples.append(trees[0] if trees else None)
        unknown_fields.append({name for name, key in spec.id_fields.items()
                               if not trees or any(_get_dotted(t, key) != _get_dotted(trees[0], key) for t in trees)})
    items = []
    for rank in range(1, phase.select.top_k + 1):
        for j, unknown, sample in zip(keep, unknown_fields, samples):
            number += 1
            grid_point = grid[j][1]
            cid = render_id(spec, number, sample, unknown)
            changes = {k: v for k, v in grid_point.items() if _get_dotted(resolver.tree, k) != v}
            items.append(Configuration(cid, index, phase.name, dict(grid_point), number=number, pending=True,
                                       parent=f"top {rank} of phase {spec.source_phase(index)}", changes=changes))
    return items, number


def _baseline_id(spec: StudySpec, configurations: list[Configuration]) -> str | None:
    if spec.baseline is None:
        return None
    if isinstance(spec.baseline, dict):
        return BASELINE_ID
    ids = [c.id for c in configurations if not c.pending]
    if spec.baseline not in ids:
        raise ConfigError(f"study spec '{spec.name}': baseline '{spec.baseline}' is not the id of a configuration "
                          f"(ids: {', '.join(ids[:10])}{'...' if len(ids) > 10 else ''})")
    return spec.baseline


def _check_distinct(spec: StudySpec, configurations: list[Configuration]) -> None:

    seen: dict[str, Configuration] = {}
    for c in configurations:
        if not c.pending and not re.match(NAME_PATTERN, c.id):
            raise ConfigError(f"study spec '{spec.name}': configuration id {c.id!r} is not a valid folder name "
                              "(letters, digits and ._+=- only)")
        if c.id in seen:
            raise ConfigError(f"study spec '{spec.name}': two configurations get the id '{c.id}'; add a field that "
                              "tells them apart to id_format")
        seen[c.id] = c
    concrete = [c for c in configurations if c.config is not None]
    fingerprints: dict[str, str] = {}
    for c in concrete:
        assert c.config is not None
        fp = json.dumps(config_to_dict(c.config), sort_keys=True, default=str)
        if fp in fingerprints:
            raise ConfigError(f"study spec '{spec.name}': configurations '{fingerprints[fp]}' and '{c.id}' are "
                              "identical (an override may replace what they vary; for a baseline that is one of "
                              f"the points, write `baseline: {fingerprints[fp]}`)")
        fingerprints[fp] = c.id
