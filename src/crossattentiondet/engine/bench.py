"""What a configuration costs before a grid is launched: training-step time, inference time, peak memory,
and the epoch / run / study time they imply.

:func:`bench` builds the configured detector with random weights, feeds it random uint8 images and random
valid boxes, and times full training steps (autocast forward per ``train.precision``, backward, the
config's optimizer step) after a warm-up, then eval-mode inference. Everything is measured, nothing is
estimated from FLOPs. :func:`profile_train_step` shows where a training step's time goes.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from crossattentiondet.config import ConfigError, ExperimentConfig
from crossattentiondet.engine.runtime import (
    autocast,
    check_precision,
    compile_backbone,
    configure_backends,
    peak_memory_mb,
    precision_notes,
    resolve_device,
    synchronize,
    use_channels_last,
)

# The original study (reference/ORIGINAL.md): 9,750 labelled frames, 80 % of them trained on, 48 runs.
DEFAULT_IMAGES = 7800
DEFAULT_RUNS = 48
BOXES_PER_IMAGE = 3  # the original data set averages ~3 boxes per frame

# every key bench() reports (tests and the CLI rely on this list)
REPORT_KEYS = (
    "backbone", "fusion", "device", "precision", "size", "batch", "steps", "warmup", "channels_last",
    "grad_checkpointing", "compile", "train_step_s", "train_step_times_s", "train_step_cpu_s", "train_images_per_s",
    "infer_batch", "infer_batch_s", "infer_image_s", "infer_images_per_s", "base_mem_mb", "peak_mem_mb",
    "images", "eval_images", "runs", "epochs", "accumulation", "epoch_s", "run_s", "study_s",
    "cpu", "threads", "torch", "notes",
)


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else what :mod:`platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def current_memory_mb(device: torch.device) -> float:
    """Memory in use now: CUDA allocated on a GPU, else the process's resident set size (MB)."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device) / 2**20
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        import resource

        return pages * resource.getpagesize() / 2**20
    except (OSError, ValueError, IndexError):
        return float("nan")


def random_batch(channels: int, size: tuple[int, int], batch: int, num_classes: int, device: torch.device,
                 seed: int = 0) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """Random uint8 images (C, H, W) and ``BOXES_PER_IMAGE`` valid boxes each (on ``device``).

    ``size`` is (width, height). Boxes are at least 4 px wide/high and lie inside the image, so the RPN and
    RoI heads do their usual matching work; inputs stay uint8 until the model normalises them.
    """
    width, height = size
    gen = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for _ in range(batch):
        images.append(torch.randint(0, 256, (channels, height, width), generator=gen, dtype=torch.uint8))
        wh = torch.rand(BOXES_PER_IMAGE, 2, generator=gen) * torch.tensor([width / 2, height / 2])
        wh = wh.clamp(min=4.0).minimum(torch.tensor([float(width), float(height)]))
        xy = torch.rand(BOXES_PER_IMAGE, 2, generator=gen) * (torch.tensor([float(width), float(height)]) - wh)
        boxes = torch.cat((xy, xy + wh), dim=1)
        labels = torch.randint(1, num_classes + 1, (BOXES_PER_IMAGE,), generator=gen)
        targets.append({"boxes": boxes, "labels": labels})
    images = [img.to(device, non_blocking=True) for img in images]
    targets = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets]
    return images, targets


def _check_args(size: tuple[int, int], batch: int, steps: int, warmup: int, images: int, runs: int,
                eval_images: int, infer_batch: int | None) -> None:
    if len(size) != 2 or min(size) <= 0:
        raise ConfigError(f"bench size {size!r} must be two positive numbers (width, height)")
    for name, value, low in (("batch", batch, 1), ("steps", steps, 1), ("warmup", warmup, 0), ("images", images, 1),
                             ("runs", runs, 1), ("eval_images", eval_images, 0)):
        if int(value) != value or value < low:
            raise ConfigError(f"bench {name}={value!r} must be an integer >= {low}")
    if infer_batch is not None and infer_batch < 1:
        raise ConfigError(f"bench infer_batch={infer_batch!r} must be an integer >= 1")


def _prepare(config: ExperimentConfig, num_classes: int, device: torch.device) -> nn.Module:
    """The detector as the trainer sets it up: random weights, on the device, channels_last if asked."""
    from crossattentiondet.models import build_detector

    model = build_detector(config, num_classes, load_pretrained=False).to(device)
    if config.train.channels_last:
        model = use_channels_last(model)  # weights and inputs, as the trainer does
    if config.train.compile:
        compile_backbone(model, config.train.compile_backend)  # exactly as the trainer does
    return model


def make_train_step(model: nn.Module, config: ExperimentConfig, images: list[torch.Tensor],
                    targets: list[dict[str, torch.Tensor]], device: torch.device) -> Callable[[], float]:
    """A closure running one full training step (forward under autocast, backward, optimizer step)."""
    from crossattentiondet.engine.optim import build_optimizer, scaled_lr

    optimizer = build_optimizer(model, config.train, scaled_lr(config.train))
    scaler = torch.amp.GradScaler(device.type, enabled=config.train.precision == "fp16")

    def step() -> float:
        with autocast(device, config.train.precision):
            losses = model(images, targets)
        loss = sum(losses.values())
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    return step


def _timed(fn: Callable[[], Any], device: torch.device, warmup: int, iters: int) -> tuple[list[float], list[float]]:
    """Wall and process-CPU seconds of ``iters`` calls after ``warmup`` untimed ones (device-synchronised).

    CPU time (summed over this process's threads) is kept because on a shared machine it moves much less
    than wall time when other processes compete for the cores.
    """
    for _ in range(warmup):
        fn()
    synchronize(device)
    wall, cpu = [], []
    for _ in range(iters):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        synchronize(device)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return wall, cpu


def bench(config: ExperimentConfig, size: tuple[int, int] = (640, 480), batch: int | None = None, steps: int = 5,
          warmup: int = 2, *, infer_batch: int | None = None, infer_steps: int | None = None,
          images: int = DEFAULT_IMAGES, eval_images: int = 0, runs: int = DEFAULT_RUNS, num_classes: int | None = None,
          train: bool = True, infer: bool = True, seed: int = 0) -> dict[str, Any]:
    """Time training steps and inference of the configured detector on random inputs of ``size`` = (W, H).

    ``batch`` defaults to ``train.batch_size``; ``infer_batch`` to ``batch``. Precision, channels_last,
    gradient checkpointing, compile, optimizer and device come from the config. Reported times are medians
    of ``steps`` timed calls after ``warmup`` untimed ones. Inference runs before training so that a CPU
    process's peak RSS (which never goes down) is the training peak. ``peak_mem_mb`` is CUDA max allocated
    on a GPU, else the peak RSS of this process (run each configuration in a fresh process to compare them);
    ``base_mem_mb`` is what was in use just before the first training step (model, inputs).

    The estimate: ``epoch_s`` = ceil(images / batch) training steps (+ ``eval_images`` inferences every
    ``train.val_every`` epochs, spread per epoch), ``run_s`` = ``train.epochs`` epochs, ``study_s`` = ``runs``
    such runs one after another on this device.
    """
    batch = config.train.batch_size if batch is None else batch
    _check_args(size, batch, steps, warmup, images, runs, eval_images, infer_batch)
    device = resolve_device(config.train.device)
    precision = config.train.precision
    check_precision(precision, device)
    configure_backends(config.train.tf32, deterministic=False, cudnn_benchmark=config.train.cudnn_benchmark)
    classes = num_classes or config.model.num_classes or 1
    torch.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    model = _prepare(config, classes, device)
    channels = model.layout.total_channels
    infer_batch = infer_batch or batch
    report: dict[str, Any] = {
        "backbone": config.model.backbone,
        "fusion": model.backbone.encoder.plan.describe() if hasattr(model.backbone.encoder, "plan") else "single stream",
        "device": str(device), "precision": precision, "size": list(size), "batch": batch, "steps": steps,
        "warmup": warmup, "channels_last": config.train.channels_last,
        "grad_checkpointing": config.model.grad_checkpointing, "compile": config.train.compile,
    }

    infer_times: list[float] = []
    if infer:
        inputs, _ = random_batch(channels, size, infer_batch, classes, device, seed)
        model.eval()

        def infer_step() -> None:
            with torch.inference_mode(), autocast(device, precision):
                model(inputs)

        infer_times, _ = _timed(infer_step, device, warmup, infer_steps or steps)
        del inputs

    train_times: list[float] = []
    train_cpu: list[float] = []
    base_mem = current_memory_mb(device)
    if train:
        model.train()
        inputs, targets = random_batch(channels, size, batch, classes, device, seed + 1)
        base_mem = current_memory_mb(device)
        train_times, train_cpu = _timed(make_train_step(model, config, inputs, targets, device), device, warmup, steps)

    step_s = statistics.median(train_times) if train_times else float("nan")
    infer_batch_s = statistics.median(infer_times) if infer_times else float("nan")
    infer_image_s = infer_batch_s / infer_batch
    steps_per_epoch = math.ceil(images / batch)
    val_per_epoch = eval_images * infer_image_s / config.train.val_every if eval_images else 0.0
    epoch_s = steps_per_epoch * step_s + val_per_epoch
    run_s = epoch_s * config.train.epochs
    report.update({
        "train_step_s": step_s,
        "train_step_times_s": train_times,
        "train_step_cpu_s": statistics.median(train_cpu) if train_cpu else float("nan"),
        "train_images_per_s": batch / step_s if train_times else float("nan"),
        "infer_batch": infer_batch,
        "infer_batch_s": infer_batch_s,
        "infer_image_s": infer_image_s,
        "infer_images_per_s": 1.0 / infer_image_s if infer_times else float("nan"),
        "base_mem_mb": base_mem,
        "peak_mem_mb": peak_memory_mb(device),
        "images": images, "eval_images": eval_images, "runs": runs, "epochs": config.train.epochs,
        "accumulation": config.train.accumulation,
        "epoch_s": epoch_s, "run_s": run_s, "study_s": run_s * runs,
        "cpu": cpu_name(), "threads": torch.get_num_threads(), "torch": torch.__version__,
        "notes": precision_notes(device, precision),
    })
    return report


def profile_train_step(config: ExperimentConfig, size: tuple[int, int] = (640, 480), batch: int | None = None,
                       steps: int = 2, warmup: int = 1, row_limit: int = 25, sort_by: str = "self_cpu_time_total",
                       num_classes: int | None = None) -> str:
    """torch.profiler table of ``steps`` training steps (after ``warmup``), top ``row_limit`` ops by ``sort_by``."""
    from torch.profiler import ProfilerActivity, profile

    batch = config.train.batch_size if batch is None else batch
    _check_args(size, batch, steps, warmup, 1, 1, 0, None)
    device = resolve_device(config.train.device)
    check_precision(config.train.precision, device)
    classes = num_classes or config.model.num_classes or 1
    torch.manual_seed(0)
    model = _prepare(config, classes, device).train()
    inputs, targets = random_batch(model.layout.total_channels, size, batch, classes, device, 1)
    step = make_train_step(model, config, inputs, targets, device)
    for _ in range(warmup):
        step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        synchronize(device)
    return prof.key_averages().table(sort_by=sort_by, row_limit=row_limit)


def bench_isolated(config: ExperimentConfig, *, threads: int | None = None, python: str | None = None,
                   extra_path: str | None = None, timeout: float | None = None, **kwargs: Any) -> dict[str, Any]:
    """:func:`bench` in a fresh Python process, so that its peak RSS belongs to this configuration alone.

    ``kwargs`` go to :func:`bench` (``size`` as a 2-list or tuple). ``threads`` sets the child's torch
    threads; ``extra_path`` is put first on its PYTHONPATH (e.g. another checkout's ``src`` to compare
    code versions on the same machine); ``python`` defaults to this interpreter.
    """
    from crossattentiondet.config import config_to_dict

    spec = {"config": config_to_dict(config), "threads": threads,
            "kwargs": {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()}}
    env = dict(os.environ)
    if extra_path:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (extra_path, env.get("PYTHONPATH", "")) if p)
    proc = subprocess.run([python or sys.executable, "-m", "crossattentiondet.engine.bench"], input=json.dumps(spec),
                          capture_output=True, text=True, env=env, timeout=timeout, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"bench subprocess failed (exit {proc.returncode}): {tail[0]}")
    return json.loads(lines[-1])


def _main() -> None:
    """Child side of :func:`bench_isolated`: a JSON spec on stdin, one JSON report line on stdout."""
    from crossattentiondet.config import build_config

    spec = json.loads(sys.stdin.read())
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    kwargs = dict(spec.get("kwargs", {}))
    if "size" in kwargs:
        kwargs["size"] = tuple(kwargs["size"])
    report = bench(build_config(spec["config"]), **kwargs)
    print(json.dumps({k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in report.items()}))


if __name__ == "__main__":
    _main()
