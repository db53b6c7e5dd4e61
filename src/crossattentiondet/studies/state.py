"""The files of one study run, which are the source of truth about it.

A run directory (``<study_dir>/<config id>/seed<k>/``) holds the trainer's files plus:
``study_config.yaml`` (the config the runner trains, written before it starts), ``stdout.log`` (output of
every attempt), ``failed.json`` (the error of the last failed attempt), ``queued.json`` (submitted to a
cluster, not started) and ``.lock`` (a process is training it: see :mod:`crossattentiondet.engine.runlock`).

Status, in order of precedence: finished (final_results.json) > running (a live lock) > failed > partial
(checkpoints/last.pt) > queued > pending (nothing yet).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# the lock is the trainer's own (engine/runlock.py): a study and a plain `cadet train` exclude each other
from crossattentiondet.engine.runlock import (
    HEARTBEAT_S,
    INHERITED_TOKEN_ENV,
    LOCK,
    STALE_REMOTE_LOCK_S,
    UNREADABLE_LOCK_GRACE_S,
    LockInfo,
    RunLock,
    lock_is_live,
    read_lock,
)

FINAL_RESULTS = "final_results.json"
LAST_CHECKPOINT = Path("checkpoints") / "last.pt"
STUDY_CONFIG = "study_config.yaml"
STDOUT_LOG = "stdout.log"
FAILED = "failed.json"
QUEUED = "queued.json"

STATUSES = ("finished", "running", "failed", "partial", "queued", "pending")


@dataclass
class RunState:
    """What the files of one run directory say."""

    status: str
    final: dict[str, Any] | None = None
    failed: dict[str, Any] | None = None
    lock: LockInfo | None = None
    epochs_done: int = 0


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def epochs_done(run_dir: Path) -> int:
    """Completed epochs according to metrics.csv (rows after the header)."""
    try:
        with (run_dir / "metrics.csv").open(encoding="utf-8") as f:
            return max(0, sum(1 for line in f if line.strip()) - 1)
    except OSError:
        return 0


def read_run_state(run_dir: Path | None) -> RunState:
    """The status of one run from its files (see the module docstring for the precedence)."""
    if run_dir is None or not run_dir.is_dir():
        return RunState("pending")
    final = _read_json(run_dir / FINAL_RESULTS)
    failed = _read_json(run_dir / FAILED)
    if final is not None:
        return RunState("finished", final=final, epochs_done=int(final.get("training", {}).get("epochs", 0) or 0))
    info, mtime = read_lock(run_dir / LOCK)
    done = epochs_done(run_dir)
    if lock_is_live(info, mtime):
        return RunState("running", failed=failed, lock=info, epochs_done=done)
    if failed is not None:
        return RunState("failed", failed=failed, epochs_done=done)
    if (run_dir / LAST_CHECKPOINT).is_file():
        return RunState("partial", epochs_done=done)
    if (run_dir / QUEUED).is_file():
        return RunState("queued", epochs_done=done)
    return RunState("pending", epochs_done=done)


__all__ = ["FAILED", "FINAL_RESULTS", "HEARTBEAT_S", "INHERITED_TOKEN_ENV", "LAST_CHECKPOINT", "LOCK", "QUEUED",
           "STALE_REMOTE_LOCK_S", "STATUSES", "STDOUT_LOG", "STUDY_CONFIG", "UNREADABLE_LOCK_GRACE_S", "LockInfo",
           "RunLock", "RunState", "epochs_done", "lock_is_live", "read_lock", "read_run_state"]
