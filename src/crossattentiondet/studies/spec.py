"""Study specs: what a study is, and how it is read from YAML (or a built-in name) with one-line errors.

A study is a base config, configurations (a matched baseline plus phases of axes or explicit points), and
seeds. Phase 1 is a fixed list; a later phase takes the top-k configurations of an earlier one, ranked by a
VALIDATION metric (mean over seeds), and expands its own grid around each of them.

Example (a YAML file passed to ``cadet study plan|run|status|report``)::

    name: lr_sweep
    base: preset:recipe_cssa            # config file or preset the configurations start from
    set: {model.fusion.type: cssa, model.fusion.stages: [3, 4]}
    seeds: 3                            # a count (0..n-1) or a list
    split_seeds: [0, 1]                 # optional: also repeat every run over these data.split.seed values
    baseline: {}                        # changes to the base ({}: the base itself), a phase-1 id, or null
    id_format: "exp_{n:03d}_lr{lr}"
    id_fields: {lr: train.lr}
    phases:
      - name: coarse
        axes: {train.lr: [0.002, 0.005, 0.01]}
      - name: refine
        select: {top_k: 1, metric: mAP}
        axes: {train.optimizer.weight_decay: [0.0001, 0.0005]}

``select.metric`` is a key of the runs' ``final_results.json["validation"]``. Its default, ``mAP``, stands
for the runs' primary metric: for segmentation runs (``task: segment``) their S-measure (binary) or mIoU
(semantic), see :meth:`SelectSpec.resolve`. ``mode`` defaults to ``min`` for metrics where smaller is better
(MAE) and ``max`` otherwise.

``split_seeds`` (a count or a list, like ``seeds``; absent by default) repeats every run over train/val/test
splits drawn with each ``data.split.seed``, so results cover the choice of split as well as training
noise. Without it runs live in ``<config>/seed<k>/`` and keep the base config's split seed; with it in
``<config>/split<j>_seed<k>/``. Every (split seed, seed) run counts as one replicate of its configuration.
"""

from __future__ import annotations

import difflib
import re
import string
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from crossattentiondet.config import ConfigError, read_config_file

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.+=-]*$"  # study, phase and configuration names become folder names
DEFAULT_SEEDS = 3
DEFAULT_SELECT_METRIC = "mAP"  # for runs of another task: their primary metric (SelectSpec.resolve)
# validation metrics where smaller is better: selected with mode "min" unless the spec says otherwise
LOWER_IS_BETTER_METRICS = frozenset({"MAE"})


class _SpecModel(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class PointSpec(_SpecModel):
    """One explicit configuration: dotted config keys and values, optionally with its own id."""

    id: str | None = Field(default=None, pattern=NAME_PATTERN)
    set: dict[str, Any] = {}

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        # `- {model.backbone: mit_b0}` and `- {id: mit_b0, model.backbone: mit_b0}` are shorthands for `set:`
        if isinstance(value, dict) and "set" not in value:
            rest = {k: v for k, v in value.items() if k != "id"}
            return {"id": value.get("id"), "set": rest}
        return value


class SelectSpec(_SpecModel):
    """How a phase picks the configurations it builds on: top_k of phase ``from`` by a validation metric."""

    from_: str | None = Field(default=None, alias="from")  # phase name; default: the previous phase
    top_k: int = Field(ge=1)
    # a key of final_results.json["validation"]; test metrics are never used to select. The default stands for
    # the runs' primary metric (segmentation: Smeasure or mIoU), see resolve()
    metric: str = DEFAULT_SELECT_METRIC
    mode: Literal["max", "min"] = "max"  # default: "min" for LOWER_IS_BETTER_METRICS

    @model_validator(mode="after")
    def _mode(self) -> SelectSpec:
        # MAE is an error: ranking it "max" would pick the worst configurations
        if "mode" not in self.model_fields_set and self.metric in LOWER_IS_BETTER_METRICS:
            self.mode = "min"
        return self

    def resolve(self, finals: list[dict[str, Any]]) -> tuple[str, str]:
        """(validation metric, mode) for runs whose final_results.json are ``finals``.

        The default metric (``mAP``) means the runs' primary metric (``primary_metric``; runs that name
        none are detection runs: mAP), and its mode follows the metric's direction (a run's
        ``lower_is_better`` list or :data:`LOWER_IS_BETTER_METRICS`) unless the spec set one. A metric the spec
        names explicitly is used as it is. Runs of different tasks or primary metrics: :class:`ConfigError`."""
        if self.metric != DEFAULT_SELECT_METRIC:
            return self.metric, self.mode
        primaries: dict[str, bool] = {}
        for final in finals:
            task = final.get("task") or "detect"
            primary = str(final.get("primary_metric") or ("mAP" if task == "detect" else DEFAULT_SELECT_METRIC))
            lower = primary in LOWER_IS_BETTER_METRICS or primary in (final.get("lower_is_better") or ())
            primaries[primary] = primaries.get(primary, False) or lower
        if len(primaries) > 1:
            raise ConfigError(f"select.metric: the runs to select from have different primary metrics "
                              f"({', '.join(primaries)}); name the validation metric to select on")
        if not primaries:
            return self.metric, self.mode
        metric, lower = next(iter(primaries.items()))
        mode = self.mode if "mode" in self.model_fields_set else "min" if lower else "max"
        return metric, mode


class PhaseSpec(_SpecModel):
    """A phase: the cartesian product of ``axes`` (with each of ``points`` when both are given)."""

    name: str = Field(pattern=NAME_PATTERN)
    axes: dict[str, list[Any]] = {}
    points: list[PointSpec] = []
    select: SelectSpec | None = None
    # a selected phase skips grid points identical to the configuration they build on (already run)
    exclude_parent: bool = True

    @model_validator(mode="after")
    def _check(self) -> PhaseSpec:
        empty = [k for k, v in self.axes.items() if not v]
        if empty:
            raise ValueError(f"axis '{empty[0]}' has no values")
        if not self.axes and not self.points:
            raise ValueError("a phase needs axes or points")
        if self.select is not None and any(p.id for p in self.points):
            raise ValueError("points of a selected phase cannot have fixed ids (one configuration per parent)")
        return self

    def grid(self) -> list[tuple[str | None, dict[str, Any]]]:
        """(explicit id or None, dotted changes) for every point of the phase, axes varying last-fastest."""
        combos: list[dict[str, Any]] = [{}]
        for key, values in self.axes.items():
            combos = [{**c, key: v} for c in combos for v in values]
        points = self.points or [PointSpec()]
        return [(p.id, {**p.set, **c}) for p in points for c in combos]


class StudySpec(_SpecModel):
    """A whole study. See the module docstring for the YAML layout."""

    name: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    base: str | dict[str, Any] | None = None  # config file, preset:NAME, or an inline config mapping
    set: dict[str, Any] = {}
    seeds: int | list[int] = DEFAULT_SEEDS
    split_seeds: int | list[int] | None = None  # None: every run uses the config's data.split.seed
    baseline: str | dict[str, Any] | None = Field(default_factory=dict)
    id_format: str = "exp_{n:03d}"
    id_fields: dict[str, str] = {}
    phases: list[PhaseSpec] = Field(min_length=1)
    _source_dir: Path | None = PrivateAttr(default=None)

    @field_validator("seeds", "split_seeds")
    @classmethod
    def _seeds(cls, value: int | list[int] | None) -> int | list[int] | None:
        if value is None:
            return value
        if isinstance(value, int):
            if value < 1:
                raise ValueError("needs at least 1 seed")
        elif not value or len(set(value)) != len(value) or any(s < 0 for s in value):
            raise ValueError(f"must be a count or a list of distinct non-negative seeds, got {value}")
        return value

    @model_validator(mode="after")
    def _check(self) -> StudySpec:
        names = [p.name for p in self.phases]
        if len(set(names)) != len(names):
            raise ValueError(f"phase names must be unique, got {names}")
        if self.phases[0].select is not None:
            raise ValueError(f"phases[0] ('{names[0]}') cannot select: there is no earlier phase")
        for i, phase in enumerate(self.phases):
            if phase.select is not None and phase.select.from_ is not None and phase.select.from_ not in names[:i]:
                raise ValueError(f"phases[{i}].select.from: '{phase.select.from_}' is not an earlier phase "
                                 f"(earlier: {names[:i]})")
        try:
            fields = {f for _, f, _, _ in string.Formatter().parse(self.id_format) if f is not None}
        except ValueError as err:
            raise ValueError(f"id_format {self.id_format!r}: {err}") from None
        unknown = sorted(f for f in fields if f != "n" and f not in self.id_fields)
        if unknown:
            raise ValueError(f"id_format uses {unknown}, which id_fields does not define")
        if isinstance(self.baseline, str) and not re.match(NAME_PATTERN, self.baseline):
            raise ValueError(f"baseline {self.baseline!r} is not a configuration id")
        return self

    def seed_list(self) -> list[int]:
        """The seeds to run: ``seeds: 3`` means [0, 1, 2]."""
        return list(range(self.seeds)) if isinstance(self.seeds, int) else list(self.seeds)

    def split_seed_list(self) -> list[int] | None:
        """The split seeds to run (``split_seeds: 2`` means [0, 1]); None when the spec has none."""
        if self.split_seeds is None:
            return None
        return list(range(self.split_seeds)) if isinstance(self.split_seeds, int) else list(self.split_seeds)

    def phase_index(self, name: str) -> int:
        """1-based phase number of the phase called ``name``."""
        return [p.name for p in self.phases].index(name) + 1

    def source_phase(self, index: int) -> int:
        """The phase (1-based) that phase ``index`` selects from."""
        select = self.phases[index - 1].select
        assert select is not None
        return self.phase_index(select.from_) if select.from_ else index - 1

    @property
    def source_dir(self) -> Path | None:
        """Folder of the spec file (relative ``base:`` paths are read from there); None for built-ins."""
        return self._source_dir


# ----------------------------------------------------------------------------------------------- loading
_UNION_TAG = re.compile(r"^(str|int|float|bool|none|(dict|list|tuple)\[.*\]|function-.*)$")


def _loc(loc: tuple[Any, ...]) -> str:
    """('phases', 0, 'axes') -> 'phases[0].axes', without pydantic's union-member tags ('str', 'dict[...]')."""
    text = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            text += f"[{part}]"
        elif i == 0 or not _UNION_TAG.match(str(part)):
            text += ("." if text else "") + str(part)
    return text or "(top level)"


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    models: dict[str, type[BaseModel]] = {"phases": PhaseSpec, "points": PointSpec, "select": SelectSpec}
    model: type[BaseModel] | None = StudySpec
    for part in loc:
        if isinstance(part, str) and part in models:
            model = models[part]
    return model


def format_spec_error(err: ValidationError, source: str) -> str:
    """One line naming every bad key of a study spec (unknown keys get a did-you-mean)."""
    problems = []
    for e in err.errors():
        loc = tuple(e["loc"])
        where = _loc(loc)
        if e["type"] == "extra_forbidden":
            model = _model_at(loc[:-1])
            fields = [f.alias or n for n, f in model.model_fields.items()] if model else []
            match = difflib.get_close_matches(str(loc[-1]), fields, n=1, cutoff=0.6)
            hint = f" (did you mean '{match[0]}'?)" if match else f" (allowed: {', '.join(fields)})"
            problems.append(f"unknown key '{where}'{hint}")
        elif e["type"] == "missing":
            problems.append(f"missing key '{where}'")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            problems.append(f"{where}: {msg}" if where != "(top level)" else msg)
    return f"study spec {source}: " + "; ".join(dict.fromkeys(problems))


def spec_from_dict(raw: dict[str, Any], source: str = "(dict)", source_dir: Path | None = None) -> StudySpec:
    """Validate a study mapping; a :class:`ConfigError` names the bad key on one line."""
    if not isinstance(raw, dict):
        raise ConfigError(f"study spec {source}: the top level must be a mapping, got {type(raw).__name__}")
    try:
        spec = StudySpec.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_spec_error(err, source)) from None
    spec._source_dir = source_dir
    return spec


def load_spec(text: str | Path) -> StudySpec:
    """A built-in study by name (``cssa``, ``gaff``, ``backbones``, ``modalities``, ``fusion``) or a YAML file."""
    from crossattentiondet.studies.builtin import BUILTIN_STUDIES, builtin_spec

    text = str(text)
    if text in BUILTIN_STUDIES:
        return spec_from_dict(builtin_spec(text), f"built-in '{text}'")
    path = Path(text)
    if not path.is_file():
        hint = " (no such file or folder)" if not path.exists() else ""
        raise ConfigError(f"study {text!r}: not a built-in study ({', '.join(BUILTIN_STUDIES)}), a study folder "
                          f"or a spec file{hint}")
    try:
        raw = read_config_file(path)
    except ConfigError as err:
        raise ConfigError(f"study spec {err}") from None
    return spec_from_dict(raw, str(path), path.parent)


def spec_to_dict(spec: StudySpec) -> dict[str, Any]:
    """The spec as a plain mapping (``from`` spelled as in YAML), for study.json and ``--print-spec``."""
    return spec.model_dump(mode="json", by_alias=True, exclude_none=False)
