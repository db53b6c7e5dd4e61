"""Benchmark 6: peak memory of training steps for mit_b0..b5 (FRM+FFM detector), one process each.

Run by hand (many minutes for b4/b5 on a 2-core CPU), not a test:

    python benchmarks/bench_memory.py [--backbones mit_b0 ... mit_b5] [--batches 2] [--checkpointing off on]
        [--precision fp32] [--src OTHER_CHECKOUT/src] [KEY=VALUE overrides]

Peak memory is CUDA max allocated on a GPU, else the process's peak RSS, so every configuration runs in a
fresh process. ``base`` is what was resident just before the first training step (libraries, model,
inputs); with two or more ``--batches`` the per-image activation memory is the slope of peak memory over
batch size (the fixed part cancels out), which is what the GPU memory plan in RESULTS.md is built from.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys

from crossattentiondet.config import load_config
from crossattentiondet.engine.bench import bench_isolated, cpu_name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/original_baseline.yaml")
    parser.add_argument("--backbones", nargs="+", default=[f"mit_b{i}" for i in range(6)])
    parser.add_argument("--batches", type=int, nargs="+", default=[2])
    parser.add_argument("--checkpointing", nargs="+", default=["off"], choices=["off", "on"])
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--size", default="640x480")
    parser.add_argument("--steps", type=int, default=2, help="timed training steps (after 1 warm-up)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--src", default=None, help="measure the package found under this directory instead")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))

    print("command:", shlex.join([os.path.basename(sys.executable), *sys.argv]))
    print(f"machine: {cpu_name()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}")
    print(f"{'backbone':9} {'ckpt':4} {'batch':>5} {'peak MB':>9} {'base MB':>9} {'step s':>7}")
    for backbone in args.backbones:
        for ckpt in args.checkpointing:
            peaks: dict[int, float] = {}
            for batch in args.batches:
                config = load_config(args.config, [
                    "train.device=cpu", f"train.precision={args.precision}", f"model.backbone={backbone}",
                    f"model.grad_checkpointing={'true' if ckpt == 'on' else 'false'}", *args.overrides])
                r = bench_isolated(config, threads=args.threads, extra_path=args.src, size=(width, height),
                                   batch=batch, steps=args.steps, warmup=1, infer=False)
                peaks[batch] = r["peak_mem_mb"]
                print(f"{backbone:9} {ckpt:4} {batch:5d} {r['peak_mem_mb']:9.0f} {r['base_mem_mb']:9.0f} "
                      f"{r['train_step_s']:7.2f}", flush=True)
            if len(peaks) >= 2:
                lo, hi = min(peaks), max(peaks)
                slope = (peaks[hi] - peaks[lo]) / (hi - lo)
                print(f"{backbone:9} {ckpt:4} per-image activation memory ~{slope:.0f} MB "
                      f"(slope between batch {lo} and {hi}); fixed part ~{peaks[lo] - slope * lo:.0f} MB")


if __name__ == "__main__":
    main()
