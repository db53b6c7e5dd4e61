"""The end of a segmentation run: test evaluation with the best weights, and everything written about it.

Writes into the run directory: ``predictions_<split>/<set>/<stem>.png`` (8-bit maps at the GT's
resolution, what COD toolkits read), ``per_image_<split>.csv`` (binary), ``table_<split>.md`` (the test sets
side by side, as COD papers print them), ``bootstrap_<split>.json`` (the primary metric's 95% CI over test
images), metrics.json, final_results.json, model_info.json and plots/ (panels image | X | GT | prediction,
training curves, missing-modality robustness).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from crossattentiondet.config import ExperimentConfig, config_to_dict
from crossattentiondet.io import atomic_write_text
from crossattentiondet.tasks.base import Selection

# columns of the per-set table, in the order COD papers print them
TABLE_METRICS = {"binary": ("Smeasure", "meanEm", "wFmeasure", "MAE", "maxFm", "maxEm", "IoU"),
                 "semantic": ("mIoU", "pixel_acc")}


def _binary(data: Any) -> bool:
    return data.num_classes == 2


def evaluate_seg_split(model: nn.Module, data: Any, split: str, config: ExperimentConfig, device: torch.device,
                       info: Any, out_dir: Path, log: Any, selection: Selection, *, tag: str = "",
                       save_maps: bool = True) -> dict[str, Any]:
    """Evaluate ``model`` on ``split``, write maps, tables, bootstrap and plots into ``out_dir``; the summary."""
    from crossattentiondet.engine.runlog import ThrottledProgress
    from crossattentiondet.segmentation.evaluate import evaluate_segmentation

    ev = config.eval
    binary = _binary(data)
    batch = ev.batch_size or config.train.batch_size
    loader = data.loader(split, False, batch, distributed=info.enabled)
    images = len(data.splits[split])
    maps_dir = out_dir / f"predictions_{split}{tag}" if save_maps else None

    def run(zeroed: list[str], label: str, keep_maps: bool) -> Any:
        progress = ThrottledProgress(label, images, log.info)
        core = getattr(model, "module", model)
        before = list(core.zero_modalities)
        core.set_zero_modalities(before + zeroed)
        try:
            return evaluate_segmentation(model, loader, device, binary=binary, class_names=data.class_names,
                                         precision=config.train.precision, gather=info.enabled,
                                         on_batch=progress.batches(len(loader)),
                                         save_dir=maps_dir if keep_maps else None)
        finally:
            core.set_zero_modalities(before)

    result = run([], split, True)
    summary: dict[str, Any] = {"split": split, "images": result.images, "metrics": result.metrics,
                               "per_set": result.per_set if len(result.per_set) > 1 else {}}
    core = getattr(model, "module", model)
    used = [m for m in core.layout.used_modalities() if m not in core.zero_modalities]
    if ev.robustness and len(used) > 1:
        rows = [{"zeroed": "none", **result.metrics}]
        for name in used:
            rows.append({"zeroed": name, **run([name], f"{split} without {name}", False).metrics})
        summary["robustness"] = rows
    if not info.is_main:
        return summary
    out_dir.mkdir(parents=True, exist_ok=True)
    if binary and result.per_image:
        _write_per_image(out_dir / f"per_image_{split}{tag}.csv", result.per_image)
    atomic_write_text(out_dir / f"table_{split}{tag}.md", sets_table(result, binary, config.name))
    boot = _bootstrap(result, selection.metric, ev.bootstrap, out_dir / f"bootstrap_{split}{tag}.json", split, log)
    if boot is not None:
        summary["bootstrap"] = boot
    plots = out_dir / "plots"
    if ev.plots and ev.panels > 0:
        from crossattentiondet.segmentation.panels import save_seg_panels

        save_seg_panels(model, data, split, config, device, plots / f"panels_{split}{tag}.png")
    if ev.plots and "robustness" in summary:
        from crossattentiondet import viz

        pair = (selection.metric, "wFmeasure" if selection.metric != "wFmeasure" else "Smeasure") if binary \
            else (selection.metric, "pixel_acc" if selection.metric != "pixel_acc" else "mIoU")
        viz.plot_robustness(summary["robustness"], plots / f"robustness_{split}{tag}.png", metrics=pair,
                            xlabel="score (MAE: lower is better)" if "MAE" in pair else "score")
    if ev.speed:
        summary["speed"] = seg_speed(model, data, split, config, device)
    ci = boot["ci95"] if boot else None
    ci_text = f" (95% CI {ci[0]:.4f}-{ci[1]:.4f})" if ci and None not in ci else ""
    main = ("Smeasure", "wFmeasure", "MAE", "meanEm") if binary else ("mIoU", "pixel_acc")
    log.info(f"{split}: " + ", ".join(f"{k} {result.metrics[k]:.4f}" + (ci_text if k == selection.metric else "")
                                      for k in main) + f" ({result.images} images)")
    for name, metrics in summary["per_set"].items():
        log.info(f"{split} {name}: " + ", ".join(f"{k} {metrics[k]:.4f}" for k in main))
    for row in summary.get("robustness", [])[1:]:
        log.info(f"{split} without {row['zeroed']}: {selection.metric} {row[selection.metric]:.4f}")
    return summary


def sets_table(result: Any, binary: bool, name: str) -> str:
    """Markdown: one row per metric, the test sets side by side (all images last)."""
    metrics = TABLE_METRICS["binary" if binary else "semantic"]
    columns = {**result.per_set, "all": result.metrics} if len(result.per_set) > 1 else {"all": result.metrics}
    lines = [f"# {name}: {result.images} images", "", "| metric | " + " | ".join(columns) + " |",
             "|---|" + "---|" * len(columns)]
    for key in metrics:
        lines.append(f"| {key} | " + " | ".join(_fmt(c.get(key)) for c in columns.values()) + " |")
    if binary:
        lines += ["", "Per image at the ground truth's resolution, averaged over images (PySODMetrics' "
                  "definitions); IoU and Dice at threshold 0.5; MAE: lower is better."]
    return "\n".join(lines) + "\n"


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) and math.isfinite(value) else "-"


def _write_per_image(path: Path, rows: list[dict[str, Any]]) -> None:
    keys = list(dict.fromkeys(k for row in rows for k in row))
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)


def _bootstrap(result: Any, metric: str, n_boot: int, path: Path, split: str, log: Any) -> dict[str, Any] | None:
    """95% CI of the mean per-image ``metric`` over resampled test images (detection's resamples, so two
    runs on the same test set get the same ones and differences are paired). Semantic mIoU: the per-image
    confusion matrices are resampled. A failure is logged; the run's final files are still written."""
    from crossattentiondet.engine.bootstrap import (
        BootstrapResult,
        percentile_ci,
        resample_weights,
        save_bootstrap,
    )

    if n_boot <= 0:
        path.unlink(missing_ok=True)
        return None
    try:
        ids = np.arange(result.images)
        weights = resample_weights(ids, n_boot).astype(np.float64)  # (B, N): draws of each image
        if result.per_image and metric in result.per_image[0]:
            values = np.array([float(row[metric]) for row in result.per_image])
            samples = weights @ values / np.maximum(weights.sum(1), 1)
            point = float(result.metrics[metric])
            if not np.isclose(point, values.mean()):  # a curve metric (maxEm, maxFm): no per-image value
                raise ValueError(f"{metric} is not a mean over images")
        elif getattr(result, "confusions", None) is not None and metric == "mIoU":
            samples = _miou_samples(result.confusions, weights)
            point = float(result.metrics[metric])
        else:
            raise ValueError(f"{metric} has no per-image values to resample")
        boot = BootstrapResult(metric=metric, point=point, samples=samples, ci95=percentile_ci(samples),
                               n_images=int(result.images), n_boot=n_boot, image_ids_hash=result.images_hash)
        save_bootstrap(path, boot, split=split)
        data = boot.to_json()
        return {k: data[k] for k in ("metric", "point", "ci95", "std", "n_boot", "n_images", "image_ids_hash")}
    except Exception as error:  # noqa: BLE001 - an optional statistic must not cost the run its final files
        log.info(f"warning: no bootstrap of {split} {metric} ({type(error).__name__}: {error})")
    path.unlink(missing_ok=True)
    return None


def _miou_samples(confusions: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """mIoU of each resample from per-image (N, K, K) confusion matrices and (B, N) image weights."""
    pooled = np.einsum("bn,nij->bij", weights, confusions.astype(np.float64))
    tp = np.diagonal(pooled, axis1=1, axis2=2)
    union = pooled.sum(1) + pooled.sum(2) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
    return np.nanmean(iou, axis=1)


def seg_speed(model: nn.Module, data: Any, split: str, config: ExperimentConfig, device: torch.device
              ) -> dict[str, Any]:
    """Parameters, size, FLOPs at the input size, latency and throughput of eval-mode inference."""
    from crossattentiondet.engine.modelinfo import (
        FLOPS_CONVENTION,
        count_forward_flops,
        count_params,
        model_size_mb,
    )
    from crossattentiondet.engine.speed import measure_inference

    dataset = data.dataset(split, False)
    samples = [s for s in (dataset[i] for i in range(min(len(dataset), 8))) if s is not None]
    if not samples:
        return {}
    batch = config.eval.batch_size or config.train.batch_size
    images = [s[0].to(device) for s in samples[:batch]]
    images = [img for img in images if img.shape == images[0].shape]
    speed = measure_inference(model, images, device, config.train.precision, warmup=1,
                              iters=config.eval.speed_iters)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            flops = count_forward_flops(lambda: model(images[:1]))
    finally:
        model.train(was_training)
    return {"params": count_params(model), "size_mb": round(model_size_mb(model), 3),
            "input_size": [int(images[0].shape[2]), int(images[0].shape[1])],
            "gflops": round(flops["flops"] / 1e9, 3), "gmacs": round(flops["macs"] / 1e9, 3),
            "flops_convention": FLOPS_CONVENTION,
            **{k: round(v, 3) if isinstance(v, float) else v for k, v in speed.items()},
            "device": str(device), "precision": config.train.precision}


def finish_seg_run(model: nn.Module, data: Any, config: ExperimentConfig, state: Any, run_dir: Path,
                   device: torch.device, info: Any, log: Any, best_val: dict[str, float], selection: Selection
                   ) -> tuple[dict[str, float], dict[str, float]]:
    """Evaluate the best weights once on the test split and write the run's final files."""
    split = config.eval.split
    if not data.splits.get(split):
        log.info(f"warning: the {split} split is empty; no final evaluation")
        summary: dict[str, Any] = {"split": split, "metrics": {}, "per_set": {}}
    else:
        summary = evaluate_seg_split(model, data, split, config, device, info, run_dir, log, selection)
    if not info.is_main:
        return summary["metrics"], best_val
    from crossattentiondet import viz
    from crossattentiondet.engine.modelinfo import count_params

    if (run_dir / "metrics.csv").is_file() and config.eval.plots:
        viz.plot_training_curves(run_dir / "metrics.csv", run_dir / "plots" / "training_curves.png")
    speed = {"params": count_params(model), **summary.get("speed", {})}
    encoder = model.backbone.encoder  # the detector's attribute path, so explain/export find it too
    model_block = {"backbone": config.model.backbone, "streams": config.model.streams,
                   "fusion": encoder.plan.describe() if hasattr(encoder, "plan") else "single stream",
                   "decoder": config.model.seg.decoder, "deep_supervision": config.model.seg.deep_supervision,
                   "input": f"{config.model.seg.resize} {config.model.seg.size}",
                   "num_classes": data.num_classes, "class_names": data.class_names,
                   **{k: speed[k] for k in ("params", "size_mb", "gflops", "gmacs", "flops_convention") if k in speed}}
    best = state.best_metric if math.isfinite(state.best_metric) else None
    if best is not None and selection.lower_is_better:
        best = -best
    training = {"epochs": state.epoch, "best_epoch": state.best_epoch, "best_val_metric": best,
                "select": selection.metric, "skipped_updates": state.skipped_total,
                "stopped_early": state.stopped_early, "train_time_s": round(state.train_time_s, 1),
                "train_images": len(data.splits["train"]), "val_images": len(data.splits.get("val", [])),
                "test_images": len(data.splits.get(split, []))}
    metrics = summary["metrics"]
    boot = summary.get("bootstrap")
    final = {
        "experiment_id": config.name,
        "task": "segment",
        "primary_metric": selection.metric,
        "lower_is_better": sorted({"MAE"} & set(metrics)),
        "config": config_to_dict(config),
        "results": metrics,
        "results_ci95": {boot["metric"]: boot["ci95"]} if boot else {},
        "results_per_set": summary.get("per_set", {}),
        "validation": best_val,
        "robustness": summary.get("robustness", []),
        "training": training,
        "model": model_block,
        "speed": speed,
    }
    from crossattentiondet.engine.report import write_final_files

    write_final_files(run_dir, final, metrics, {"per_set": summary.get("per_set", {})}, config, state, log,
                      f"final_results.json, predictions_{split}/, metrics.csv, checkpoints/best.pt, plots/")
    return metrics, best_val
