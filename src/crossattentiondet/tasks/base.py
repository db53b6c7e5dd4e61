"""The task seam: everything that differs between detection and segmentation, behind one small interface.

The trainer (engine/trainer.py), checkpoints, resume, EMA, AMP, DDP, early stopping and the study runner
never ask which task runs; they call a :class:`Task`. A task supplies

- the data: :meth:`Task.prepare_data` returns an object with the prepared-data protocol the trainer uses
  (``resolved_config``, ``splits``, ``loader(split, train, batch, ...)``, ``class_names``, ``num_classes``,
  ``root``, ``input_spec``): batches are ``(images, targets, metas)`` lists, targets dicts of tensors;
- the model: :meth:`Task.build_model`, whose forward returns a dict of losses in training mode;
- the evaluator: :meth:`Task.evaluate` (validation metrics) and :meth:`Task.finish_run` (the test
  evaluation and the run's final files), and the metric that picks best.pt (:meth:`Task.select_metric`).

Adding a task means one new module here plus its heads, registered in ``tasks/__init__.py``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from crossattentiondet.config import ConfigError, ExperimentConfig


@dataclass(frozen=True)
class Selection:
    """The validation metric that picks best.pt, and which way is better."""

    metric: str
    lower_is_better: bool = False

    def score(self, metrics: dict[str, float]) -> float:
        """A number where larger is better; NaN (no ground truth) never counts as an improvement."""
        value = float(metrics.get(self.metric, math.nan))
        if value != value:
            return -math.inf
        return -value if self.lower_is_better else value


class Task(ABC):
    """What a task supplies to the shared engine (see the module docstring)."""

    name: str
    #: validation metrics this task can select best.pt by (``eval.select``)
    selectable: tuple[str, ...] = ()
    lower_is_better: frozenset[str] = frozenset()

    @abstractmethod
    def prepare_data(self, config: ExperimentConfig, run_dir: Path | None, log: Callable[[str], None]) -> Any:
        """Open, check and split the data set; the prepared-data object the trainer uses."""

    @abstractmethod
    def build_model(self, config: ExperimentConfig, num_classes: int, *, load_pretrained: bool = True) -> nn.Module:
        """The model; in training mode ``model(images, targets)`` returns a dict of loss tensors."""

    @abstractmethod
    def loss_keys(self, config: ExperimentConfig) -> tuple[str, ...]:
        """The keys of the loss dict (the same for every batch of a run)."""

    @abstractmethod
    def default_metric(self, config: ExperimentConfig, data: Any) -> str:
        """The validation metric that picks best.pt when ``eval.select`` is not set."""

    @abstractmethod
    def evaluate(self, model: nn.Module, loader: Any, device: torch.device, config: ExperimentConfig, data: Any,
                 *, gather: bool, on_batch: Callable[[int], None] | None = None) -> dict[str, float]:
        """Validation metrics of ``model`` on ``loader`` (gathered over DDP ranks when ``gather``)."""

    @abstractmethod
    def finish_run(self, model: nn.Module, data: Any, config: ExperimentConfig, state: Any, run_dir: Path,
                   device: torch.device, info: Any, log: Any, best_val: dict[str, float]
                   ) -> tuple[dict[str, float], dict[str, float]]:
        """Evaluate the best weights on the test split and write the run's final files; (test, val) metrics."""

    @abstractmethod
    def evaluate_split(self, model: nn.Module, data: Any, split: str, config: ExperimentConfig,
                       device: torch.device, info: Any, out_dir: Path, log: Any) -> dict[str, Any]:
        """``cadet eval``: evaluate ``split`` and write the task's files into ``out_dir``; the summary
        (``split``, ``images``, ``metrics`` and the task's extras)."""

    @abstractmethod
    def predict(self, model: nn.Module, config: ExperimentConfig, checkpoint: dict[str, Any],
                frames: list[tuple[str, dict[str, Any]]], out: Path, *, score_thresh: float, panels: int,
                batch_size: int, echo: Callable[[str], None]) -> Path:
        """``cadet predict``: run ``model`` on (name, modality -> array) frames, write the task's outputs into
        ``out``; the main file written."""

    @abstractmethod
    def describe(self, config: ExperimentConfig, data: Any) -> str:
        """One line about the model and data for the run log."""

    def val_note(self, metrics: dict[str, float], selection: Selection) -> str:
        """The validation part of the epoch line."""
        return f"val {selection.metric} {metrics.get(selection.metric, math.nan):.4f}"

    def select_metric(self, config: ExperimentConfig, data: Any) -> Selection:
        """``eval.select`` if set (checked against what this task computes), else the task's default."""
        metric = config.eval.select or self.default_metric(config, data)
        allowed = self.selectable_for(config, data)
        if allowed and metric not in allowed:
            raise ConfigError(f"eval.select={metric!r} is not a validation metric of task {self.name} "
                              f"(choose from {', '.join(allowed)})")
        return Selection(metric, metric in self.lower_is_better)

    def selectable_for(self, config: ExperimentConfig, data: Any) -> tuple[str, ...]:
        return self.selectable
