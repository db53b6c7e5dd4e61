"""Segmentation speed: training step and inference time of the seed's model (timm edgenext_base + U-Net
with deep supervision) at 384x384, batch 8, fp32 and bf16.

Run by hand (minutes on a CPU), not a test:

    python benchmarks/bench_seg_step.py [--backbone timm:edgenext_base] [--size 384] [--batch 8]
        [--precision fp32 bf16] [--steps 3] [--warmup 1] [KEY=VALUE overrides]

Random weights (no download), random uint8 RGB frames and binary masks; a training step = forward (autocast
per precision) + BCE/IoU/edge/deep-supervision loss + backward + AdamW step; inference = eval-mode forward
of the batch. Prints the median over ``--steps`` timed steps after ``--warmup`` untimed ones, and the CPU.
bf16 autocast is fast only on CPUs with AVX512-BF16 or AMX; elsewhere it is emulated (slower than fp32).
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import time

import torch

from crossattentiondet.config import build_config
from crossattentiondet.engine.bench import cpu_name
from crossattentiondet.engine.runtime import autocast
from crossattentiondet.segmentation.model import build_segmenter


def timed(fn, steps: int, warmup: int) -> list[float]:  # noqa: ANN001
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="timm:edgenext_base")
    parser.add_argument("--size", type=int, default=384)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = parser.parse_args()
    print("command:", shlex.join([os.path.basename(sys.executable), *sys.argv]))
    print(f"machine: {cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} "
          f"threads, load average {os.getloadavg()[0]:.2f}")
    rgb = "{name: rgb, channels: 3, mean: [0.485,0.456,0.406], std: [0.229,0.224,0.225]}"
    config = build_config({}, ["task=segment", f"model.backbone={args.backbone}", "model.streams=[[rgb]]",
                               f"data.modalities=[{rgb}]", f"model.seg.size={args.size}",
                               "model.seg.deep_supervision=true", *args.overrides])
    torch.manual_seed(0)
    model = build_segmenter(config, 2, load_pretrained=False)
    params = sum(p.numel() for p in model.parameters())
    print(f"model: {args.backbone} + {config.model.seg.decoder} (deep supervision), {params / 1e6:.1f} M parameters, "
          f"batch {args.batch} x 3 x {args.size} x {args.size}")
    device = torch.device("cpu")
    images = torch.randint(0, 256, (args.batch, 3, args.size, args.size), dtype=torch.uint8)
    masks = [{"mask": (torch.rand(args.size, args.size) > 0.7).to(torch.uint8)} for _ in range(args.batch)]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    for precision in args.precision:
        model.train()

        def train_step(precision: str = precision) -> None:
            optimizer.zero_grad(set_to_none=True)
            with autocast(device, precision):
                losses = model(list(images), masks)
            sum(losses.values()).backward()
            optimizer.step()

        def infer(precision: str = precision) -> None:
            with torch.inference_mode(), autocast(device, precision):
                model(images)

        train_times = timed(train_step, args.steps, args.warmup)
        model.eval()
        infer_times = timed(infer, args.steps, args.warmup)
        step, inference = statistics.median(train_times), statistics.median(infer_times)
        print(f"{precision}: train step {step:.2f} s (median of {args.steps}: "
              f"{', '.join(f'{t:.2f}' for t in train_times)}), {args.batch / step:.2f} img/s; "
              f"inference {inference:.2f} s per batch ({inference / args.batch * 1e3:.0f} ms/image)")


if __name__ == "__main__":
    main()
