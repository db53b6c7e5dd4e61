"""Benchmark 2: inference latency and throughput of the original-equivalent mit_b1 FRM+FFM detector.

Run by hand (minutes), not a test:

    python benchmarks/bench_inference.py [--batches 1 8] [--precision fp32] [--repeats 3] [--steps 5]
        [--src OTHER_CHECKOUT/src] [KEY=VALUE overrides]

Eval-mode forward (RPN 1000 proposals per image, box head, NMS) on random 640x480 uint8 inputs at native
resolution, 1 class, random weights. Each repeat is a fresh process; medians are printed.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys

from crossattentiondet.config import load_config
from crossattentiondet.engine.bench import bench_isolated, cpu_name

# reference/ORIGINAL.md: the original code, batch 2, 640x480, mit_b1, fp32: ~2.1 s per batch. Not measured here.
ORIGINAL_BATCH2_S = 2.1
TARGET_IMAGE_S = ORIGINAL_BATCH2_S / 2 / 2  # "at least 2x faster"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/original_baseline.yaml")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--size", default="640x480")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per setting")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--src", default=None, help="time the package found under this directory instead")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))

    print("command:", shlex.join([os.path.basename(sys.executable), *sys.argv]))
    print(f"machine: {cpu_name()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}")
    for precision in args.precision:
        config = load_config(args.config, ["train.device=cpu", f"train.precision={precision}", *args.overrides])
        for batch in args.batches:
            per_batch = []
            for i in range(args.repeats):
                r = bench_isolated(config, threads=args.threads, extra_path=args.src, size=(width, height),
                                   infer_batch=batch, steps=args.steps, warmup=args.warmup, train=False)
                per_batch.append(r["infer_batch_s"])
                print(f"  {precision} batch {batch} repeat {i + 1}: {r['infer_batch_s']:.3f} s per batch, "
                      f"{r['infer_image_s']:.3f} s per image (threads {r['threads']}, load {os.getloadavg()[0]:.2f})")
            median = statistics.median(per_batch)
            print(f"{precision} batch {batch}: median {median:.3f} s per batch = {median / batch:.3f} s per image = "
                  f"{batch / median:.2f} images/s (min {min(per_batch):.3f}, max {max(per_batch):.3f} s per batch)")
            print(f"  original (ORIGINAL.md, not measured here): ~{ORIGINAL_BATCH2_S / 2:.2f} s per image at batch 2 "
                  f"-> ratio {ORIGINAL_BATCH2_S / 2 / (median / batch):.2f}x; target <= {TARGET_IMAGE_S:.3f} s per image")


if __name__ == "__main__":
    main()
