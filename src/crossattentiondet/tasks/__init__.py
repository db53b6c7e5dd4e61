"""Tasks: what differs between detection and segmentation (see tasks/base.py), selected by ``task:``.

``get_task(config.task)`` (or the name stored in a checkpoint's config) returns the task object the
trainer, ``cadet eval`` and ``cadet predict`` call.
"""

from __future__ import annotations

from typing import Any

from crossattentiondet.config import ConfigError
from crossattentiondet.tasks.base import Selection, Task
from crossattentiondet.tasks.detect import DetectionTask
from crossattentiondet.tasks.segment import SegmentationTask

TASKS: dict[str, type[Task]] = {"detect": DetectionTask, "segment": SegmentationTask}


def get_task(name: str) -> Task:
    """The task registered under ``name`` (``detect`` or ``segment``)."""
    try:
        return TASKS[name]()
    except KeyError:
        raise ConfigError(f"unknown task {name!r} (choose from {', '.join(TASKS)})") from None


def detection_only(task: str, what: str) -> None:
    """Refuse ``what`` (a command) for tasks other than detection, with what to use instead."""
    if task != "detect":
        raise ConfigError(f"{what} handles detection models only; for task={task} runs, final_results.json and "
                          "model_info.json hold parameters, size, GFLOPs and latency (benchmarks/bench_seg_step.py "
                          "times training steps)")


def task_of(config_tree: dict[str, Any]) -> str:
    """The task of a stored config (checkpoints written before tasks existed are detection)."""
    return str(config_tree.get("task", "detect"))


__all__ = ["TASKS", "DetectionTask", "SegmentationTask", "Selection", "Task", "detection_only", "get_task",
           "task_of"]
