"""Benchmark 5: data loading throughput (images/s) from both layouts, with 0 and 2 workers.

Run by hand (a minute or two), not a test:

    python benchmarks/bench_data_loading.py [--images 400] [--size 640x480] [--batch 8] [--epochs 3]
        [--workers 0 2] [--augment] [--dir DIR]

Writes synthetic frames of the given size once into DIR (default: a temporary folder) in the original layout
(``images/*.npy`` (H, W, 5) uint8 + YOLO labels) and in the paired-folders layout (``rgb/`` PNG, 16-bit
``thermal/`` PNG, ``event/`` PNG + YOLO labels), then iterates the training loader of each (batches exactly
as the trainer receives them, uint8/uint16 tensors, no model) and reports the median images/s over
``--epochs`` passes. The first pass of a loader with workers includes the workers' start-up.
``--augment`` turns on the training augmentation of the demo preset (flip, scale jitter, crop); the default
is the plain path (flip only, the config default).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from crossattentiondet.config import build_config
from crossattentiondet.data.dataset import prepare_data
from crossattentiondet.data.synth import generate_dataset
from crossattentiondet.engine.bench import cpu_name

AUGMENT = ["data.augment.scale_jitter=[0.8,1.25]", "data.augment.crop_prob=0.5"]


def images_per_s(root: Path, layout: str, workers: int, batch: int, epochs: int, augment: bool) -> list[float]:
    overrides = [f"data.root={root}", f"data.layout={layout}", f"data.loader.num_workers={workers}",
                 f"train.batch_size={batch}", *(AUGMENT if augment else [])]
    config = build_config({}, overrides)
    data = prepare_data(config, None, log=lambda _m: None)
    loader = data.loader("train", True, batch, seed=0)
    rates = []
    for epoch in range(epochs):
        if loader.epoch_sampler is not None:
            loader.epoch_sampler.set_epoch(epoch)
        seen, start = 0, time.perf_counter()
        for images, _targets, _metas in loader:
            seen += len(images)
        rates.append(seen / (time.perf_counter() - start))
    del loader
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--size", default="640x480", help="WxH of the synthetic frames")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=3, help="passes per loader; the median is reported")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--augment", action="store_true", help="scale jitter + crop on top of the flip")
    parser.add_argument("--dir", default=None, help="where to write the frames (reused if present)")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))

    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="cadet_bench_data_"))
    layouts = {"original": ("npy", base / "original"), "folders": ("folders", base / "folders")}
    for fmt, root in layouts.values():
        if not (root / "synth.json").is_file():
            print(f"writing {args.images} frames ({width}x{height}, {fmt}) to {root}", file=sys.stderr)
            generate_dataset(root, args.images, (width, height), 3, fmt, seed=0)

    print(f"# {cpu_name()}, {os.cpu_count()} cores; {args.images} frames {width}x{height}, batch {args.batch}, "
          f"train split (data.split default), augment={'flip+scale+crop' if args.augment else 'flip'}")
    print("| layout | workers | images/s (median) | per pass |")
    print("|---|---|---|---|")
    for layout, (_fmt, root) in layouts.items():
        for workers in args.workers:
            rates = images_per_s(root, layout, workers, args.batch, args.epochs, args.augment)
            passes = ", ".join(f"{r:.0f}" for r in rates)
            print(f"| {layout} | {workers} | {statistics.median(rates):.0f} | {passes} |", flush=True)


if __name__ == "__main__":
    main()
