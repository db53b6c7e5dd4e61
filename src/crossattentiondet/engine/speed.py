"""Timing that can be trusted: warm-up first, device synchronisation, medians."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from crossattentiondet.engine.runtime import autocast, peak_memory_mb, synchronize


def timed(fn: Callable[[], Any], device: torch.device, warmup: int, iters: int) -> list[float]:
    """Run ``fn`` ``warmup`` times untimed, then ``iters`` times; seconds per call (device-synchronised)."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def random_images(model: nn.Module, batch: int, size: tuple[int, int], device: torch.device) -> list[torch.Tensor]:
    """Random uint8 inputs shaped like real samples ((C_total, H, W)); ``size`` = (width, height)."""
    width, height = size
    gen = torch.Generator().manual_seed(0)
    return [torch.randint(0, 256, (model.layout.total_channels, height, width), generator=gen, dtype=torch.uint8).to(device)
            for _ in range(batch)]


def measure_inference(model: nn.Module, images: list[torch.Tensor], device: torch.device, precision: str = "fp32",
                      warmup: int = 2, iters: int = 5) -> dict[str, float]:
    """Median latency per batch and per image, throughput, and peak memory of eval-mode inference."""
    was_training = model.training
    model.eval()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def step() -> None:
        with torch.inference_mode(), autocast(device, precision):
            model(images)

    try:
        times = timed(step, device, warmup, iters)
    finally:
        model.train(was_training)
    median = statistics.median(times)
    return {
        "batch_size": len(images),
        "latency_ms_per_batch": median * 1e3,
        "latency_ms_per_image": median * 1e3 / len(images),
        "images_per_s": len(images) / median,
        "peak_mem_mb": peak_memory_mb(device),
    }
