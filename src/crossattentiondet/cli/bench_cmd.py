"""``cadet bench``: what a configuration costs (step time, inference time, memory, epoch/study estimate)."""

from __future__ import annotations

import argparse
import math
from typing import Any

from crossattentiondet.cli.common import add_config_args, config_from_args, parse_size, print_json


def register(sub: argparse._SubParsersAction) -> None:
    from crossattentiondet.engine.bench import DEFAULT_IMAGES, DEFAULT_RUNS

    p = sub.add_parser(
        "bench", help="time training steps and inference of a configuration on random inputs",
        description="Build the configured detector (random weights, no data needed), time training steps "
                    "(forward with train.precision autocast, backward, optimizer step) after a warm-up and "
                    "eval-mode inference on random inputs, report medians and peak memory, and estimate "
                    "epoch, run and study time.")
    add_config_args(p)
    p.add_argument("--size", default="640x480", metavar="WxH", help="input size (default 640x480)")
    p.add_argument("--batch", type=int, default=None, metavar="B", help="training batch (default: train.batch_size)")
    p.add_argument("--infer-batch", type=int, default=None, metavar="B", help="inference batch (default: --batch)")
    p.add_argument("--steps", type=int, default=5, metavar="N", help="timed steps, median reported (default 5)")
    p.add_argument("--warmup", type=int, default=2, metavar="N", help="untimed warm-up steps (default 2)")
    p.add_argument("--images", type=int, default=DEFAULT_IMAGES, metavar="N",
                   help=f"training images per epoch for the estimate (default {DEFAULT_IMAGES}: the original "
                        "data set's 80%% training split)")
    p.add_argument("--eval-images", type=int, default=0, metavar="N",
                   help="validation images per validation pass for the estimate (default 0)")
    p.add_argument("--runs", type=int, default=DEFAULT_RUNS, metavar="R",
                   help=f"runs in the study for the estimate (default {DEFAULT_RUNS}: the original grid)")
    p.add_argument("--no-infer", action="store_true", help="skip the inference timing")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_bench)


def _int_arg(name: str, value: int | None, low: int) -> None:
    from crossattentiondet.config import ConfigError

    if value is not None and value < low:
        raise ConfigError(f"--{name} must be >= {low}, got {value}")


def cmd_bench(args: argparse.Namespace) -> int:
    from crossattentiondet.engine.bench import bench

    # check the cheap things before building a model
    size = parse_size(args.size)
    for name, low in (("batch", 1), ("infer_batch", 1), ("steps", 1), ("warmup", 0), ("images", 1),
                      ("eval_images", 0), ("runs", 1)):
        _int_arg(name.replace("_", "-"), getattr(args, name), low)
    from crossattentiondet.tasks import detection_only

    config = config_from_args(args)
    detection_only(config.task, "cadet bench")
    report = bench(config, size, batch=args.batch, steps=args.steps, warmup=args.warmup, infer_batch=args.infer_batch,
                   images=args.images, eval_images=args.eval_images, runs=args.runs, infer=not args.no_infer)
    if args.json:
        print_json(report)  # NaN (a part that was not measured) prints as null
        return 0
    print_report(report)
    return 0


def format_duration(seconds: float) -> str:
    """1.234 -> '1.23 s', 5400 -> '1.5 h', 200000 -> '2.3 d'."""
    if not math.isfinite(seconds):
        return "-"
    if seconds < 120:
        return f"{seconds:.3g} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def print_report(r: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    w, h = r["size"]
    table = Table(title=f"{r['backbone']} detector on {r['device']} ({r['precision']}), {w}x{h}",
                  caption=f"fusion: {r['fusion']}; medians of {r['steps']} steps after {r['warmup']} warm-up")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row(f"training step (batch {r['batch']})", format_duration(r["train_step_s"]))
    table.add_row("training throughput", f"{r['train_images_per_s']:.3g} images/s")
    table.add_row(f"inference per image (batch {r['infer_batch']})", format_duration(r["infer_image_s"]))
    table.add_row("inference throughput", f"{r['infer_images_per_s']:.3g} images/s")
    table.add_row("peak memory", f"{r['peak_mem_mb']:,.0f} MB" + (" (RSS)" if r["device"] == "cpu" else " (CUDA)"))
    table.add_row(f"epoch ({r['images']:,} images)", format_duration(r["epoch_s"]))
    table.add_row(f"run ({r['epochs']} epochs)", format_duration(r["run_s"]))
    table.add_row(f"study ({r['runs']} runs, one after another)", format_duration(r["study_s"]))
    console = Console()
    console.print(table)
    options = [f"{k}={r[k]}" for k in ("channels_last", "grad_checkpointing", "compile") if r[k]]
    console.print(f"{r['cpu']}, {r['threads']} threads, torch {r['torch']}" + (f"; {', '.join(options)}" if options else ""))
    for note in r.get("notes", []):
        console.print(f"[yellow]note:[/yellow] {note}")
