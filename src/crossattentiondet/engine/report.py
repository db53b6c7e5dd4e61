"""The end of a run: test evaluation with the best weights, and everything written about it.

Writes into the run directory: predictions_<split>.json (COCO results) and gt_<split>.json (its COCO
ground truth), metrics.json, final_results.json (the original project's format and key names),
bootstrap_<split>.json (the bootstrap of mAP over test images, see :mod:`crossattentiondet.engine.bootstrap`),
model_info.json, plots/ (PR curve, confusion matrix, precision / recall / F1 vs score threshold, sample
panels, training curves, missing-modality robustness).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from crossattentiondet.config import ExperimentConfig, config_to_dict
from crossattentiondet.engine.runtime import DistInfo

ORIGINAL_RESULT_KEYS = ("mAP", "mAP_50", "mAP_75", "mAP_small", "mAP_medium", "mAP_large")


def evaluate_split(model: nn.Module, data: Any, split: str, config: ExperimentConfig, device: torch.device,
                   info: DistInfo, out_dir: Path, log: Any, *, tag: str = "",
                   on_result: Callable[[Any], None] | None = None) -> dict[str, Any]:
    """Evaluate ``model`` on ``split`` and write predictions, metrics, plots into ``out_dir``.

    Returns a JSON-ready summary: metrics (of ``eval.size_bins``), per-class AP, robustness rows, speed,
    "size_bins", "max_dets" (detections per image and class behind each protocol's numbers), "notes" (a
    model capped below AI-TOD's 1500 detections), "tiling" (``eval.tile`` set), and (``eval.bootstrap``
    > 0, rank 0) "bootstrap": the 95% CI of mAP over test images, whose samples go to
    bootstrap_<split><tag>.json. Only rank 0 writes. ``on_result`` is given the split's EvalResult (the
    run log's PR curves). Progress lines go to ``log.info`` (throttled, see ThrottledProgress).

    With ``eval.tile`` the model runs on overlapping tiles of each frame (``engine.tiling.maybe_tiled``) for
    everything here: metrics, robustness, panels and speed (the latency and FLOPs of tiled inference).
    """
    from crossattentiondet.engine.evaluate import (
        detection_cap,
        evaluate,
        max_dets_of,
        robustness_table,
        save_predictions,
    )
    from crossattentiondet.engine.runlog import ThrottledProgress

    ev = config.eval
    if ev.tile is not None:  # imported only when tiling is on
        from crossattentiondet.engine.tiling import maybe_tiled

        model = maybe_tiled(model, ev)
    batch = ev.batch_size or config.train.batch_size
    loader = data.loader(split, False, batch, distributed=info.enabled)
    images = len(data.splits[split])
    progress = ThrottledProgress(split, images, log.info)
    # the model's own limit where it says one, else the configured one; a tiled model without an explicit cap
    # keeps up to the per-window cap x its windows: no fixed limit to report (None)
    cap = detection_cap(model)
    if cap is None and ev.tile is None:
        cap = config.model.detector.detections_per_img
    result = evaluate(model, loader, device, precision=config.train.precision, class_names=data.class_names,
                      gather=info.enabled, on_batch=progress.batches(len(loader)), size_bins=ev.size_bins,
                      max_detections=cap)
    if on_result is not None:
        on_result(result)
    summary: dict[str, Any] = {"split": split, "images": images, "metrics": result.metrics,
                               "per_class": result.per_class, "size_bins": ev.size_bins,
                               "max_dets": max_dets_of(ev.size_bins)}
    if result.notes:
        summary["notes"] = list(result.notes)
    if ev.tile is not None:
        summary["tiling"] = {"tile": ev.tile, "overlap": ev.tile_overlap, "nms_iou": ev.tile_nms_iou}
    from crossattentiondet.engine.missrate import split_miss_rates  # MR2_* (eval.miss_rate), lower is better

    summary["metrics"] = {**result.metrics, **split_miss_rates(result, data, ev.miss_rate, log)}
    if ev.robustness and len(model.layout.used_modalities()) > 1:
        passes = ThrottledProgress(f"{split} robustness", images, log.info, pass_batches=len(loader))
        rows = robustness_table(model, loader, device, precision=config.train.precision,
                                class_names=data.class_names, gather=info.enabled, on_progress=passes,
                                size_bins=ev.size_bins)
        summary["robustness"] = rows
    if not info.is_main:
        return summary

    plots = out_dir / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    save_predictions(out_dir / f"predictions_{split}{tag}.json", result.predictions)
    from crossattentiondet.engine.evaluate import save_ground_truth

    # the ground truth next to the predictions: pycocotools (or any COCO tool) reproduces the metrics
    save_ground_truth(out_dir / f"gt_{split}{tag}.json", result.ground_truth(),
                      f"ground truth of the {split} split of {data.root}")
    from crossattentiondet import viz

    confusion = result.confusion_matrix(ev.confusion_score_thresh)
    summary["confusion_matrix"] = confusion.to_json()
    if ev.plots:
        viz.plot_pr_curve(result, plots / f"pr_curve_{split}{tag}.png", data.class_names)
        viz.plot_confusion_matrix(confusion, plots / f"confusion_matrix_{split}{tag}.png")
        viz.plot_confidence_curves(result.confidence_curves(), plots / f"confidence_curves_{split}{tag}.png",
                                   data.class_names)
    if "robustness" in summary and ev.plots:
        viz.plot_robustness(summary["robustness"], plots / f"robustness_{split}{tag}.png")
    if ev.panels > 0 and ev.plots:
        _panels(model, data, split, config, device, plots / f"panels_{split}{tag}.png")
    if ev.speed:
        summary["speed"] = speed_and_size(model, data, split, config, device)
    boot = _bootstrap(result, ev.bootstrap, out_dir / f"bootstrap_{split}{tag}.json", split, log)
    if boot is not None:
        summary["bootstrap"] = boot
    ci = f", 95% CI {boot['ci95'][0]:.4f}-{boot['ci95'][1]:.4f}" if boot and None not in boot["ci95"] else ""
    log.info(f"{split}: mAP {result.metrics['mAP']:.4f}{ci}  mAP50 {result.metrics['mAP_50']:.4f}  "
             f"mAP75 {result.metrics['mAP_75']:.4f}  ({summary['images']} images)")
    if ev.size_bins != "coco":
        m = result.metrics
        log.info(f"{split} (AI-TOD bins, up to {max_dets_of(ev.size_bins)['aitod']} detections per image): "
                 + "  ".join(f"{k} {_fmt(m[k])}" for k in ("mAP_aitod", "mAP_verytiny", "mAP_tiny",
                                                           "mAP_small_aitod", "mAP_medium_aitod")))
    for note in result.notes:
        log.info(f"note: {note}")
    for row in summary.get("robustness", [])[1:]:
        log.info(f"{split} with {row['zeroed']} zeroed: mAP {row['mAP']:.4f}")
    return summary


def _fmt(value: float | None) -> str:
    return "n/a" if value is None or value != value else f"{value:.4f}"


def _bootstrap(result: Any, n_boot: int, path: Path, split: str, log: Any) -> dict[str, Any] | None:
    """Bootstrap mAP over the evaluated images, write ``path``; the summary without samples, or None.

    A failure here must not cost a finished run its final files: it is logged and the run goes on. A file
    left by an earlier evaluation into the same directory is removed when no new one is written, so a
    stale interval is never read as this one's.
    """
    from crossattentiondet.engine.bootstrap import bootstrap_map, save_bootstrap

    if n_boot > 0:
        try:
            boot = bootstrap_map(result, n_boot)
            save_bootstrap(path, boot, split=split)
            data = boot.to_json()
            return {k: data[k] for k in ("metric", "point", "ci95", "std", "n_boot", "n_images", "image_ids_hash")}
        except Exception as error:  # noqa: BLE001 - optional statistic, see the docstring
            log.info(f"warning: bootstrap of {split} mAP failed ({type(error).__name__}: {error}); no {path.name}")
    path.unlink(missing_ok=True)
    return None


def _panels(model: nn.Module, data: Any, split: str, config: ExperimentConfig, device: torch.device, path: Path) -> None:
    """One PNG with eval.panels samples spread over the split's sequences (each titled with its file name),
    ground truth and predictions."""
    from crossattentiondet import viz
    from crossattentiondet.engine.runtime import autocast

    dataset = data.dataset(split, False)
    # frames spread over the split's sequences (the first N would be N near-identical frames of one clip);
    # a regex grouping the user defined names the sequences, otherwise the automatic one does
    group_by = config.data.split.group_by if config.data.split.group_by.startswith("regex:") else "auto"
    chosen = viz.choose_panel_frames(dataset.stems, config.eval.panels, group_by)
    position = {stem: i for i, stem in enumerate(dataset.stems)}
    images, targets, predictions, titles = [], [], [], []
    model.eval()
    for stem in chosen:
        item = dataset[position[stem]]
        if item is None:
            continue
        image, target, _ = item
        with torch.inference_mode(), autocast(device, config.train.precision):
            out = model([image.to(device)])[0]
        images.append(image)
        targets.append(target)
        predictions.append({k: v.float().cpu() if v.is_floating_point() else v.cpu() for k, v in out.items()})
        first = data.source.modality_file(stem, data.source.modalities[0].name)
        titles.append(first.name if first is not None else stem)
    if images:
        viz.save_panels(images, targets, predictions, model.layout, data.class_names, path,
                        max_panels=len(images), titles=titles)


def speed_and_size(model: nn.Module, data: Any, split: str, config: ExperimentConfig, device: torch.device) -> dict[str, Any]:
    """Parameters, size, FLOPs at the evaluation resolution, latency and throughput, peak memory."""
    from crossattentiondet.engine.modelinfo import FLOPS_CONVENTION, count_flops, count_params, model_size_mb
    from crossattentiondet.engine.speed import measure_inference

    dataset = data.dataset(split, False)
    samples = [dataset[i] for i in range(min(len(dataset), 8))]
    samples = [s for s in samples if s is not None]
    if not samples:
        return {}
    heights = [int(s[0].shape[1]) for s in samples]
    widths = [int(s[0].shape[2]) for s in samples]
    size = (int(statistics.median(widths)), int(statistics.median(heights)))
    images = [s[0].to(device) for s in samples[: config.eval.batch_size or config.train.batch_size]]
    speed = measure_inference(model, images, device, config.train.precision, warmup=1, iters=config.eval.speed_iters)
    flops = count_flops(model, size)
    return {
        "params": count_params(model),
        "size_mb": round(model_size_mb(model), 3),
        "eval_size": list(size),
        **{k: round(v, 3) for k, v in flops.items()},
        "flops_convention": FLOPS_CONVENTION,
        **{k: round(v, 3) if isinstance(v, float) else v for k, v in speed.items()},
        "device": str(device),
        "precision": config.train.precision,
    }


def finish_run(model: nn.Module, data: Any, config: ExperimentConfig, state: Any, run_dir: Path, device: torch.device,
               info: DistInfo, log: Any, best_val: dict[str, float]) -> tuple[dict[str, float], dict[str, float]]:
    """Evaluate the best weights once on the test split and write the run's final files."""

    split = config.eval.split
    if not data.splits.get(split):
        log.info(f"warning: the {split} split is empty; no final evaluation")
        summary: dict[str, Any] = {"split": split, "metrics": {}}
    else:
        summary = evaluate_split(model, data, split, config, device, info, run_dir, log,
                                 on_result=lambda result: log.pr_curves(result, split, state.global_step))
    if not info.is_main:
        return summary["metrics"], best_val
    from crossattentiondet import viz

    if (run_dir / "metrics.csv").is_file() and config.eval.plots:
        viz.plot_training_curves(run_dir / "metrics.csv", run_dir / "plots" / "training_curves.png")
    from crossattentiondet.engine.modelinfo import count_params

    # the parameter count is free; eval.speed=false only skips the timed parts
    speed = {"params": count_params(model), **summary.get("speed", {})}
    model_block = {"backbone": config.model.backbone, "streams": config.model.streams,
                   "fusion": model.backbone.encoder.plan.describe() if hasattr(model.backbone.encoder, "plan") else "single stream",
                   "num_classes": data.num_classes, "class_names": data.class_names,
                   **{k: speed[k] for k in ("params", "size_mb", "backbone_gflops", "detector_gflops", "backbone_gmacs",
                                            "detector_gmacs", "flops_convention", "eval_size") if k in speed}}
    select = config.eval.select or "mAP"
    best = None if not math.isfinite(state.best_metric) else state.best_metric
    training = {"epochs": state.epoch, "best_epoch": state.best_epoch,
                # the best validation value of the metric that chose best.pt (eval.select, default mAP)
                **({"best_val_mAP": best} if select == "mAP" else {"best_val_metric": best}), "select": select,
                "skipped_updates": state.skipped_total, "stopped_early": state.stopped_early,
                "train_time_s": round(state.train_time_s, 1), "train_images": len(data.splits["train"]),
                "val_images": len(data.splits.get("val", [])), "test_images": len(data.splits.get(split, []))}
    metrics = summary["metrics"]
    # the original's keys first; with eval.size_bins=aitod COCO's small/medium/large are not computed and left
    # out (a null would read as "no ground truth of that size")
    original = [k for k in ORIGINAL_RESULT_KEYS if k in metrics or config.eval.size_bins != "aitod"]
    final = {
        "experiment_id": config.name,
        "task": "detect",
        "primary_metric": "mAP",
        "config": config_to_dict(config),
        "results": {**{k: metrics.get(k) for k in original}, **metrics,
                    "mAP_ci95": summary.get("bootstrap", {}).get("ci95")},
        "size_bins": config.eval.size_bins,
        "max_dets": summary.get("max_dets", {"coco": 100}),
        **({"notes": summary["notes"]} if summary.get("notes") else {}),
        "validation": best_val,
        "per_class": summary.get("per_class", {}),
        "robustness": summary.get("robustness", []),
        "training": training,
        "model": model_block,
        "speed": speed,
    }
    extra = {"per_class": summary.get("per_class", {}), "size_bins": config.eval.size_bins,
             **({"notes": summary["notes"]} if summary.get("notes") else {})}
    write_final_files(run_dir, final, metrics, extra, config, state, log,
                      "final_results.json, metrics.csv, checkpoints/best.pt, plots/")
    return metrics, best_val


def write_final_files(run_dir: Path, final: dict[str, Any], metrics: dict[str, float], metrics_extra: dict[str, Any],
                      config: ExperimentConfig, state: Any, log: Any, written: str) -> None:
    """final_results.json, metrics.json (the test ``metrics``, the best validation ones, ``metrics_extra``),
    model_info.json,
    the run log's final entry (TensorBoard, MLflow) and the "done" line naming what was ``written``; the same
    for every task."""
    from crossattentiondet.io import atomic_write_json

    split = config.eval.split
    best_val = final["validation"]
    atomic_write_json(run_dir / "final_results.json", final)
    atomic_write_json(run_dir / "metrics.json", {"split": split, "test": metrics, "val": best_val, **metrics_extra,
                                                 "best_epoch": state.best_epoch})
    atomic_write_json(run_dir / "model_info.json", {**final["model"], **final["speed"]})
    log.final(metrics, [run_dir / name for name in ("final_results.json", "config.yaml", "metrics.csv", "plots")],
              config=config_to_dict(config), val=best_val, step=state.global_step, split=split)
    log.info(f"done: {run_dir} ({written})")
