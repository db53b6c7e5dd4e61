"""Everything a run writes as it goes: training.log, metrics.csv, metrics_per_batch.csv, TensorBoard, MLflow.

Only the main process writes; on other ranks every method is a no-op. metrics.csv is rewritten atomically
after each epoch (one row per epoch), so a resumed run continues the same file without duplicated rows.
"""

from __future__ import annotations

import csv
import io
import math
import time
from pathlib import Path
from typing import Any

from crossattentiondet.io import atomic_write_text

EPOCH_COLUMNS = [
    "epoch", "loss", "loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg", "lr",
    "skipped_updates", "frozen_stages", "train_img_per_s", "epoch_time_s",
    "val_mAP", "val_mAP_50", "val_mAP_75", "val_mAP_small", "val_mAP_medium", "val_mAP_large",
    "val_mAR_100", "val_time_s",
]
BATCH_COLUMNS = ["epoch", "iteration", "global_step", "loss", "loss_classifier", "loss_box_reg", "loss_objectness",
                 "loss_rpn_box_reg", "lr", "img_per_s"]


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value)
    return str(value)


class RunLog:
    def __init__(self, run_dir: Path, enabled: bool, *, tensorboard: bool = True, iteration_csv: bool = False,
                 mlflow: Any = None, echo: Any = print) -> None:
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.echo = echo if enabled else (lambda *_: None)
        self.iteration_csv = iteration_csv
        self._tb = None
        self._mlflow = None
        self._epoch_rows: list[dict[str, Any]] = []
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._log_file = (self.run_dir / "training.log").open("a", encoding="utf-8")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.run_dir / "tensorboard"))
        if mlflow is not None and mlflow.enabled:
            self._mlflow = _start_mlflow(mlflow, self.run_dir)

    # ---------------------------------------------------------------------------------------- text log
    def info(self, message: str, echo: bool = True) -> None:
        if not self.enabled:
            return
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        self._log_file.write(f"{stamp} {message}\n")
        self._log_file.flush()
        if echo:
            self.echo(message)

    # ------------------------------------------------------------------------------------ epoch metrics
    @property
    def epoch_rows(self) -> list[dict[str, Any]]:
        """The rows of metrics.csv so far (saved in last.pt, so a kill before the CSV write loses nothing)."""
        return list(self._epoch_rows)

    def resume_from(self, completed_epochs: int, rows: list[dict[str, Any]] | None = None) -> None:
        """Continue metrics.csv after ``completed_epochs``, rewriting it at once.

        ``rows`` are the rows saved in last.pt; they replace the file's (which may lack the last epoch when
        the process was killed between the checkpoint and the CSV write). Older checkpoints without rows keep
        the file's rows of completed epochs.
        """
        if not self.enabled:
            return
        if rows is None:
            path = self.run_dir / "metrics.csv"
            if not path.is_file():
                return
            with path.open(newline="", encoding="utf-8") as f:
                rows = list(csv.DictReader(f))
        self._epoch_rows = [dict(r) for r in rows if r.get("epoch") and int(r["epoch"]) <= completed_epochs]
        self._write_epoch_csv()

    def epoch(self, row: dict[str, Any], step: int) -> None:
        if not self.enabled:
            return
        self._epoch_rows.append(row)
        self._write_epoch_csv()
        numbers = {k: v for k, v in row.items() if isinstance(v, (int, float)) and k != "epoch"}
        self.scalars({f"epoch/{k}": v for k, v in numbers.items()}, step)
        if self._mlflow is not None:
            self._mlflow.log_metrics({k: float(v) for k, v in numbers.items() if math.isfinite(float(v))},
                                     step=int(row["epoch"]))

    def _write_epoch_csv(self) -> None:
        extra = sorted({k for r in self._epoch_rows for k in r} - set(EPOCH_COLUMNS))
        columns = EPOCH_COLUMNS + extra
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for r in self._epoch_rows:
            writer.writerow({c: _fmt(r.get(c)) for c in columns})
        atomic_write_text(self.run_dir / "metrics.csv", buffer.getvalue())
        alias = self.run_dir / "metrics_per_epoch.csv"  # the original project's file name
        if not alias.exists():
            try:
                alias.symlink_to("metrics.csv")
            except OSError:
                pass

    # ---------------------------------------------------------------------------------------- per batch
    def batch(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.scalars({f"train/{k}": v for k, v in row.items() if k not in ("epoch", "iteration", "global_step")},
                     int(row["global_step"]))
        if not self.iteration_csv:
            return
        path = self.run_dir / "metrics_per_batch.csv"
        new = not path.exists()
        with path.open("a", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=BATCH_COLUMNS, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow({c: _fmt(row.get(c)) for c in BATCH_COLUMNS})

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self._tb is None:
            return
        for key, value in values.items():
            if isinstance(value, (int, float)) and math.isfinite(float(value)):
                self._tb.add_scalar(key, value, step)

    # -------------------------------------------------------------------------------------------- final
    def params(self, params: dict[str, Any]) -> None:
        if self._mlflow is not None:
            flat = {k: str(v)[:500] for k, v in params.items()}
            for start in range(0, len(flat), 90):  # MLflow limits params per call
                self._mlflow.log_params(dict(list(flat.items())[start:start + 90]))

    def final(self, metrics: dict[str, float], artifacts: list[Path]) -> None:
        if self._mlflow is not None:
            self._mlflow.log_metrics({f"test_{k}": float(v) for k, v in metrics.items()
                                      if isinstance(v, (int, float)) and math.isfinite(float(v))})
            for path in artifacts:
                if path.is_file():
                    self._mlflow.log_artifact(str(path))

    def close(self) -> None:
        if not self.enabled:
            return
        if self._tb is not None:
            self._tb.close()
        if self._mlflow is not None:
            self._mlflow.end_run()
        self._log_file.close()


def _start_mlflow(cfg: Any, run_dir: Path) -> Any:
    """Start an MLflow run; by default in a local SQLite store next to the runs (no server needed)."""
    try:
        import mlflow
    except ImportError:
        from crossattentiondet.config import ConfigError

        raise ConfigError("output.mlflow.enabled=true needs MLflow: pip install 'crossattentiondet[mlflow]'") from None
    root = run_dir.parent.resolve()
    mlflow.set_tracking_uri(cfg.tracking_uri or f"sqlite:///{root / 'mlflow.db'}")
    if mlflow.get_experiment_by_name(cfg.experiment) is None:
        try:
            mlflow.create_experiment(cfg.experiment, artifact_location=(root / "mlruns").as_uri())
        except mlflow.exceptions.MlflowException:
            pass  # another process of a study created it first
    mlflow.set_experiment(cfg.experiment)
    mlflow.start_run(run_name=run_dir.name)
    return mlflow
