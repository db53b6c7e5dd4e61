"""Everything a run writes and says as it goes: training.log, metrics.csv, metrics_per_batch.csv, TensorBoard,
MLflow, and the progress lines of batch jobs (iterations with ETAs, evaluation progress).

Only the main process writes; on other ranks every method is a no-op. metrics.csv is rewritten atomically
after each epoch (one row per epoch), so a resumed run continues the same file without duplicated rows.
At the end of a run TensorBoard gets the test metrics, the hyper-parameters (HParams dashboard) and one PR
curve per class; MLflow gets the final metrics and the run's files (config.yaml, final_results.json,
metrics.csv, plots/; checkpoints/best.pt only with ``output.mlflow.log_models``). A resumed run
continues its MLflow run (its id is kept in ``mlflow_run.json``).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from crossattentiondet.config import ConfigError
from crossattentiondet.io import atomic_write_json, atomic_write_text, read_json

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


def format_duration(seconds: float) -> str:
    """``00:42``, ``59:59``, ``1:02:03``, ``2d 03:04:05``; ``--:--`` when unknown (NaN, infinite, negative)."""
    if not math.isfinite(seconds) or seconds < 0:
        return "--:--"
    total = int(round(seconds))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours:02d}:{minutes:02d}:{secs:02d}"
    if hours:
        return f"{hours}:{minutes:02d}:{secs:02d}"
    return f"{minutes:02d}:{secs:02d}"


def stdout_is_terminal() -> bool:
    """Whether stdout is an interactive terminal (False for batch jobs, pipes, files and closed streams)."""
    try:
        return bool(sys.stdout.isatty())
    except (AttributeError, ValueError):
        return False


class TrainingClock:
    """Estimates the time left in the current epoch and in the whole run (training and validation).

    The epoch's rest is its own pace so far; every later epoch is the mean wall time (training plus
    validation) of the epochs finished in this session, or, before the first one has finished, this epoch's
    projected training time. The final test evaluation is not included. Early stopping can only shorten it.
    """

    def __init__(self, epochs: int, iterations: int, clock: Callable[[], float] = time.perf_counter) -> None:
        self.epochs = epochs
        self.iterations = max(iterations, 1)
        self.clock = clock
        self._epoch_start = clock()
        self._epoch_times: list[float] = []  # whole epochs: training + validation
        self._overheads: list[float] = []  # the part after the last iteration (validation, checkpoints)
        self._train_end: float | None = None

    def start_epoch(self) -> None:
        self._epoch_start = self.clock()
        self._train_end = None

    def end_training(self) -> None:
        """The epoch's last iteration is done (validation and checkpoints follow)."""
        self._train_end = self.clock()

    def end_epoch(self) -> None:
        """The epoch is over, validation and checkpoints included."""
        now = self.clock()
        self._epoch_times.append(now - self._epoch_start)
        if self._train_end is not None:
            self._overheads.append(now - self._train_end)

    def left(self, epoch: int, done: int) -> tuple[float, float]:
        """(seconds left in epoch ``epoch`` (0-based), seconds left in the run) after ``done`` iterations."""
        if done <= 0:
            return math.nan, math.nan
        pace = (self.clock() - self._epoch_start) / done
        epoch_left = pace * max(self.iterations - done, 0)
        later = max(self.epochs - epoch - 1, 0)
        if self._epoch_times:
            per_epoch = sum(self._epoch_times) / len(self._epoch_times)
            overhead = sum(self._overheads) / len(self._overheads) if self._overheads else 0.0
        else:
            per_epoch, overhead = pace * self.iterations, 0.0
        return epoch_left, epoch_left + overhead + later * per_epoch

    def run_left(self, epochs_done: int) -> float:
        """Seconds left in the run once ``epochs_done`` epochs are finished (NaN before the first)."""
        if not self._epoch_times:
            return math.nan
        return max(self.epochs - epochs_done, 0) * sum(self._epoch_times) / len(self._epoch_times)


def iteration_line(epoch: int, epochs: int, iteration: int, iterations: int, loss: float, lr: float,
                   images_per_s: float, epoch_left: float, run_left: float) -> str:
    """The line a batch job logs every ``train.print_every`` updates (``epoch``, ``iteration`` 1-based)."""
    return (f"epoch {epoch}/{epochs} iter {iteration}/{iterations}: loss {loss:.4f}, lr {lr:.3g}, "
            f"{images_per_s:.1f} img/s, epoch ETA {format_duration(epoch_left)}, "
            f"run ETA {format_duration(run_left)}")


class ThrottledProgress:
    """Progress lines for a long loop (an evaluation): ``test: 120/480 images, 00:42 left``.

    Called with ``(done, total)`` work units (batches), it reports ``images`` scaled by that fraction. With
    ``pass_batches`` the work is several passes of that many batches over the same images (a robustness
    table): ``test robustness: pass 2/4, 120/480 images, 02:10 left`` (the time left is for all passes).
    A line each time another ``step`` of the work (10 %) is done or ``every_s`` seconds passed since the
    last one, whichever comes first, and a last line with the time taken, so a batch job's log shows
    progress without one line per batch.
    """

    def __init__(self, label: str, images: int, emit: Callable[[str], None], *, step: float = 0.1,
                 every_s: float = 60.0, pass_batches: int = 0,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.label = label
        self.images = images
        self.emit = emit
        self.step = step
        self.every_s = every_s
        self.pass_batches = pass_batches
        self.clock = clock
        self._start = clock()
        self._last_line = self._start
        self._last_bucket = 0
        self._finished = False

    def __call__(self, done: int, total: int) -> None:
        if total <= 0 or done <= 0 or self._finished:
            return
        now = self.clock()
        elapsed = now - self._start
        passes = max(1, round(total / self.pass_batches)) if self.pass_batches else 1
        if done >= total:
            self._finished = True
            what = f"{passes} passes of {self.images} images" if self.pass_batches else \
                f"{self.images}/{self.images} images"
            self.emit(f"{self.label}: {what} in {format_duration(elapsed)}")
            return
        bucket = int(done / total / self.step)
        if bucket <= self._last_bucket and now - self._last_line < self.every_s:
            return
        self._last_bucket, self._last_line = max(bucket, self._last_bucket), now
        left = format_duration(elapsed / done * (total - done))
        if self.pass_batches:
            index = (done - 1) // self.pass_batches
            shown = min(self.images, round(self.images * (done - index * self.pass_batches) / self.pass_batches))
            self.emit(f"{self.label}: pass {index + 1}/{passes}, {shown}/{self.images} images, {left} left")
        else:
            shown = min(self.images, round(self.images * done / total))
            self.emit(f"{self.label}: {shown}/{self.images} images, {left} left")

    def batches(self, total: int) -> Callable[[int], None]:
        """An ``on_batch(batches_done)`` callback (as :func:`~crossattentiondet.engine.evaluate.evaluate`
        takes) for a loop of ``total`` batches."""
        return lambda done: self(done, total)


# ------------------------------------------------------------------------------------ TensorBoard extras
HPARAM_KEYS = (
    "name", "seed", "model.backbone", "model.streams", "model.fusion.type", "model.fusion.stages",
    "model.fusion.other", "model.fusion.flow", "model.zero_modalities", "task", "model.seg.decoder",
    "model.seg.size", "model.seg.deep_supervision", "model.seg.moe.enabled", "model.seg.moe.num_experts",
    "data.split.seed", "train.epochs", "train.phases", "train.start_phase",
    "train.batch_size", "train.accumulation", "train.lr", "train.lr_scaling", "train.optimizer.type",
    "train.optimizer.weight_decay", "train.schedule.type", "train.schedule.warmup_epochs", "train.precision",
    "train.ema.enabled", "train.freeze.epochs", "train.grad_clip",
)
"""The resolved config keys a run shows in TensorBoard's HParams dashboard (lists and None as text)."""
HPARAM_METRICS = ("mAP", "mAP_50", "mAP_75", "mAP_small", "mAP_medium", "mAP_large", "mAR_100",
                  # segmentation (task: segment): COD and semantic
                  "Smeasure", "meanEm", "wFmeasure", "MAE", "maxFm", "IoU", "mIoU", "pixel_acc")
PR_THRESHOLDS = 101  # score thresholds 0, 0.01, ..., 1 of the TensorBoard PR curves


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def hparams_of(config: dict[str, Any]) -> dict[str, bool | int | float | str]:
    """The :data:`HPARAM_KEYS` of a resolved config tree, as TensorBoard takes them (lists as JSON text)."""
    flat = _flatten(config)
    out: dict[str, bool | int | float | str] = {}
    for key in HPARAM_KEYS:
        if key not in flat:
            continue
        value = flat[key]
        out[key] = value if isinstance(value, (bool, int, float, str)) else json.dumps(value)
    return out


def pr_curve_counts(result: Any, num_thresholds: int = PR_THRESHOLDS) -> dict[str, dict[str, np.ndarray]]:
    """Per class, the counts of a precision-recall curve over score thresholds, from the evaluator's matches.

    ``result`` is an :class:`~crossattentiondet.engine.evaluate.EvalResult` with image records. Detections
    are matched to ground truth as COCO does for AP50 (IoU 0.5, area "all", 100 detections per image and
    class; :func:`crossattentiondet.engine.bootstrap.match_detections`). At threshold ``t`` (``num_thresholds``
    evenly spaced in [0, 1], as TensorBoard's PR curves use them) the detections scoring at least ``t`` give
    the true and false positives; false negatives are the ground-truth boxes not found, so recall is over all
    of them (not just those a detection touched). There are no true negatives in detection (0). Classes
    without ground truth have no curve. Returns ``{class: {"tp", "fp", "tn", "fn", "precision", "recall"}}``.
    """
    from crossattentiondet.engine.bootstrap import MAX_DETECTIONS, match_detections
    from crossattentiondet.engine.evaluate import SCORE_DECIMALS

    matches = match_detections(result)
    thresholds = np.linspace(0.0, 1.0, num_thresholds)
    records = sorted(result.image_records, key=lambda r: int(r.image_id))
    curves: dict[str, dict[str, np.ndarray]] = {}
    for k, name in enumerate(result.class_names):
        if k >= len(matches.classes):
            continue  # no box of this class, true or predicted, anywhere
        num_gt = int(matches.gt_counts[:, k].sum())
        if num_gt == 0:
            continue
        label = k + 1
        # the scores of the matched detections, in the matches' order (descending; equal scores are
        # counted together at every threshold, so the order among ties does not matter)
        per_image = [np.sort(np.round(np.asarray(r.dt_scores, np.float64)[np.asarray(r.dt_labels) == label],
                                      SCORE_DECIMALS))[::-1][:MAX_DETECTIONS] for r in records]
        scores = np.sort(np.concatenate(per_image) if per_image else np.zeros(0))[::-1]
        cls = matches.classes[k]
        if len(scores) != cls.true_positive.shape[1]:
            raise ValueError(f"PR curve of class {name!r}: {len(scores)} scores for "
                             f"{cls.true_positive.shape[1]} matched detections")
        tp_flag = cls.true_positive[0]  # IoU 0.5
        counted = ~cls.ignored[0] if cls.ignored is not None else np.ones_like(tp_flag)
        # detections at or above each threshold: scores are descending, so a prefix of them
        above = len(scores) - np.searchsorted(scores[::-1], thresholds, side="left")
        tp_cum = np.concatenate([[0], np.cumsum(tp_flag)])
        fp_cum = np.concatenate([[0], np.cumsum(~tp_flag & counted)])
        tp = tp_cum[above].astype(np.float64)
        fp = fp_cum[above].astype(np.float64)
        fn = num_gt - tp
        curves[name] = {"tp": tp, "fp": fp, "tn": np.zeros_like(tp), "fn": fn,
                        "precision": tp / np.maximum(tp + fp, 1e-7), "recall": tp / num_gt}
    return curves


class RunLog:
    """The writer of one run directory's logs (see the module docstring); a no-op where ``enabled`` is False."""

    def __init__(self, run_dir: Path, enabled: bool, *, tensorboard: bool = True, iteration_csv: bool = False,
                 mlflow: Any = None, echo: Any = print) -> None:
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.echo = echo if enabled else (lambda *_: None)
        self.iteration_csv = iteration_csv
        self._tb = None
        self._mlflow = None
        # output.mlflow.log_models: checkpoints/best.pt goes to MLflow too (hundreds of MB for a large model)
        self.log_models = bool(getattr(mlflow, "log_models", False))
        self._finished = False
        self._epoch_rows: list[dict[str, Any]] = []
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._log_file = (self.run_dir / "training.log").open("a", encoding="utf-8")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.run_dir / "tensorboard"))
        if mlflow is not None and mlflow.enabled:
            try:
                self._mlflow = _start_mlflow(mlflow, self.run_dir)
            except BaseException:  # not installed, store unreachable: nothing opened here stays open
                if self._tb is not None:
                    self._tb.close()
                self._log_file.close()
                raise

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
        self._to_mlflow("log_metrics", {k: float(v) for k, v in numbers.items() if math.isfinite(float(v))},
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
        if new:  # the head's own loss keys (DETR: loss_class, loss_giou, ...) after the common columns
            columns = BATCH_COLUMNS + sorted(k for k in row if k not in BATCH_COLUMNS)
        else:  # a resumed run appends under the header it wrote (its loss keys do not change)
            with path.open(newline="", encoding="utf-8") as f:
                columns = next(csv.reader(f), None) or BATCH_COLUMNS
        with path.open("a", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow({c: _fmt(row.get(c)) for c in columns})

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self._tb is None:
            return
        for key, value in values.items():
            if isinstance(value, (int, float)) and math.isfinite(float(value)):
                self._tb.add_scalar(key, value, step)

    # -------------------------------------------------------------------------------------------- final
    def params(self, params: dict[str, Any]) -> None:
        """The flattened config as MLflow parameters (values cut to MLflow's 500 characters)."""
        if self._mlflow is not None:
            flat = {k: str(v)[:500] for k, v in params.items()}
            for start in range(0, len(flat), 90):  # MLflow limits params per call
                self._to_mlflow("log_params", dict(list(flat.items())[start:start + 90]))

    def pr_curves(self, result: Any, split: str, step: int) -> None:
        """One TensorBoard PR curve per class (``pr_curve_<split>/<class>``) from an evaluation's matches."""
        if self._tb is None:
            return
        try:
            curves = pr_curve_counts(result)
        except ValueError as error:  # an optional view: it must not cost a finished run its final files
            self.info(f"warning: no TensorBoard PR curves of {split} ({error})")
            return
        for name, c in curves.items():
            self._tb.add_pr_curve_raw(f"pr_curve_{split}/{name}", c["tp"], c["fp"], c["tn"], c["fn"],
                                      c["precision"], c["recall"], global_step=step,
                                      num_thresholds=len(c["tp"]))

    def final(self, metrics: dict[str, float], artifacts: Sequence[Path], *, config: dict[str, Any] | None = None,
              val: dict[str, float] | None = None, step: int = 0, split: str = "test") -> None:
        """The end of a run: ``metrics`` (of ``split``) as TensorBoard scalars ``<split>/<metric>`` and as
        MLflow metrics ``test_<metric>``; with ``config`` (the resolved config tree) the HParams entry of
        :data:`HPARAM_KEYS` with the final ``<split>_`` and best ``val_`` metrics; ``artifacts`` (files, or
        folders logged under their name) to MLflow."""
        self._finished = True
        finite = {k: float(v) for k, v in metrics.items()
                  if isinstance(v, (int, float)) and math.isfinite(float(v))}
        if self._tb is not None:
            self.scalars({f"{split}/{k}": v for k, v in finite.items()}, step)
            if config is not None:
                best = {k: float(v) for k, v in (val or {}).items()
                        if isinstance(v, (int, float)) and math.isfinite(float(v))}
                # the best validation metrics, then the final ones (which win when eval.split is val)
                scores = {**{f"hparams/val_{k}": best[k] for k in HPARAM_METRICS if k in best},
                          **{f"hparams/{split}_{k}": finite[k] for k in HPARAM_METRICS if k in finite}}
                # run_name ".": the HParams entry lives in the run's own folder, next to its curves
                self._tb.add_hparams(hparams_of(config), scores, run_name=".", global_step=step)
            self._tb.flush()
        if self._mlflow is not None:
            self._to_mlflow("log_metrics", {f"test_{k}": v for k, v in finite.items()})
            for path, under in mlflow_artifacts(self.run_dir, artifacts, self.log_models):
                if path.is_file():
                    self._to_mlflow("log_artifact", str(path), artifact_path=under)
                elif path.is_dir() and any(path.iterdir()):
                    self._to_mlflow("log_artifacts", str(path), artifact_path=path.name)

    def close(self) -> None:
        """Close the files; the MLflow run ends FINISHED after :meth:`final`, FAILED when an exception is on
        its way out, else KILLED (stopped or interrupted: resuming the run directory continues it)."""
        if not self.enabled:
            return
        if self._tb is not None:
            self._tb.close()
        if self._mlflow is not None:
            error = sys.exc_info()[0]  # inside the trainer's ``finally``: the exception ending the run, if any
            status = "FINISHED" if self._finished else "KILLED" if error is None or not issubclass(
                error, Exception) else "FAILED"
            self._to_mlflow("end_run", status=status)
        self._log_file.close()

    def _to_mlflow(self, method: str, *args: Any, **kwargs: Any) -> None:
        """Call ``mlflow.<method>``; a failure (a locked or unreachable store) turns MLflow off for the rest of
        the run with one warning line: tracking never ends a training run."""
        if self._mlflow is None:
            return
        try:
            getattr(self._mlflow, method)(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 - see the docstring
            mlflow, self._mlflow = self._mlflow, None
            if method != "end_run":
                # the run stays active in this process otherwise, and the next run's start_run would refuse
                with contextlib.suppress(Exception):
                    mlflow.end_run(status="FAILED")
            self.info(f"warning: MLflow {method} failed ({type(error).__name__}: {str(error).splitlines()[0][:200]}); "
                      "no more MLflow logging in this run")


# ---------------------------------------------------------------------------------------------- MLflow
MODEL_ARTIFACT = Path("checkpoints") / "best.pt"
"""The run's model file, uploaded to MLflow (under ``checkpoints/``) only with ``output.mlflow.log_models``."""


def _is_model_file(path: Path, run_dir: Path) -> bool:
    if path.suffix in (".pt", ".pth", ".safetensors"):
        return True
    try:
        return path.resolve().is_relative_to((run_dir / "checkpoints").resolve())
    except OSError:
        return False


def mlflow_artifacts(run_dir: Path, artifacts: Sequence[Path], log_models: bool) -> list[tuple[Path, str | None]]:
    """What a finished run uploads to MLflow: ``(path, artifact folder)`` for each of ``artifacts`` (files, or
    folders logged under their name) that is not a model file, plus ``checkpoints/best.pt`` when
    ``log_models``. Model files are large and already in the run directory: without ``log_models`` none goes
    (like the seed project's fast configuration, ``mlflow_log_models: false``), whatever the caller lists."""
    run_dir = Path(run_dir)
    out: list[tuple[Path, str | None]] = [(Path(p), None) for p in artifacts if not _is_model_file(Path(p), run_dir)]
    if log_models:
        out.append((run_dir / MODEL_ARTIFACT, MODEL_ARTIFACT.parent.as_posix()))
    return out


MLFLOW_RUN_FILE = "mlflow_run.json"
"""In the run directory: the MLflow store and run id of the run, so that a resumed run continues it."""
RUN_NAME_TAG = "mlflow.runName"  # MLflow's own tag for the run name; in output.mlflow.tags it names the run


def default_tracking_uri(root: Path) -> str:
    """The local SQLite store of the runs under ``root``: ``sqlite:///<root>/mlflow.db``."""
    return f"sqlite:///{Path(root).resolve() / 'mlflow.db'}"


def artifact_root_of(tracking_uri: str) -> Path | None:
    """Where a local SQLite store keeps artefacts (``mlruns/`` next to the database); None for a server."""
    if tracking_uri.startswith("sqlite:///"):
        return Path(tracking_uri[len("sqlite:///"):]).parent / "mlruns"
    return None


def open_mlflow_experiment(tracking_uri: str, experiment: str) -> str:
    """Point MLflow at ``tracking_uri`` and return the id of ``experiment``, creating it (with its artefacts
    next to a local SQLite store) when it does not exist yet. Several processes may race to create it."""
    try:
        import mlflow
    except ImportError:
        raise ConfigError("output.mlflow.enabled=true needs MLflow: pip install 'crossattentiondet[mlflow]'") from None
    try:
        mlflow.set_tracking_uri(tracking_uri)
        found = mlflow.get_experiment_by_name(experiment)
        if found is None:
            artifacts = artifact_root_of(tracking_uri)
            try:
                return mlflow.create_experiment(experiment, artifact_location=artifacts.as_uri() if artifacts else None)
            except mlflow.exceptions.MlflowException:
                found = mlflow.get_experiment_by_name(experiment)  # another process created it first
                if found is None:
                    raise
        return str(found.experiment_id)
    except mlflow.exceptions.MlflowException as error:
        raise ConfigError(f"output.mlflow: cannot open experiment {experiment!r} in {tracking_uri} "
                          f"({str(error).splitlines()[0][:200]})") from None


def _start_mlflow(cfg: Any, run_dir: Path) -> Any:
    """Start (or, for a resumed run, continue) the MLflow run of ``run_dir``; by default in a local SQLite
    store next to the runs (no server needed). ``cfg.tags`` are set on the run; their ``mlflow.runName``
    names it (default: the run directory's name)."""
    import mlflow

    uri = cfg.tracking_uri or default_tracking_uri(run_dir.parent)
    experiment_id = open_mlflow_experiment(uri, cfg.experiment)
    tags = {str(k): str(v) for k, v in (getattr(cfg, "tags", None) or {}).items()}
    name = tags.pop(RUN_NAME_TAG, run_dir.name)
    record = run_dir / MLFLOW_RUN_FILE
    try:
        previous = read_json(record) if record.is_file() else {}
    except (OSError, ValueError):
        previous = {}  # unreadable: this run directory's MLflow run starts anew
    if isinstance(previous, dict) and previous.get("tracking_uri") == uri and \
            previous.get("experiment_id") == experiment_id and isinstance(previous.get("run_id"), str):
        try:
            mlflow.start_run(run_id=previous["run_id"], tags=tags or None)
            return mlflow
        except mlflow.exceptions.MlflowException:
            pass  # the run was deleted from the store: start a new one
    run = mlflow.start_run(experiment_id=experiment_id, run_name=name, tags=tags or None)
    atomic_write_json(record, {"tracking_uri": uri, "experiment_id": experiment_id, "run_id": run.info.run_id})
    return mlflow
