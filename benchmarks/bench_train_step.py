"""Benchmark 1: training step time of the original-equivalent mit_b1 FRM+FFM detector (fp32 and bf16).

Run by hand (minutes), not a test:

    python benchmarks/bench_train_step.py [--precision fp32 bf16] [--repeats 3] [--steps 5] [--profile]
        [--src OTHER_CHECKOUT/src] [KEY=VALUE overrides]

Batch 2, 640x480 uint8 inputs at native resolution, 1 class, random weights, random boxes; a full step =
forward (autocast per precision) + backward + SGD step. Each repeat runs in a fresh process; the median
step of each process and the median over processes are printed. ``--src`` times another version of the
code (e.g. a checkout of the commit before an optimisation) with the same harness. ``--profile`` prints
torch.profiler's top operators of one step instead.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys

from crossattentiondet.config import load_config
from crossattentiondet.engine.bench import bench_isolated, cpu_name, profile_train_step

# From reference/ORIGINAL.md ("Speed reference"): the original code on this project's 2-core CPU machine
# class. Not measured here.
ORIGINAL_STEP_S = {"fp32": 7.0, "bf16": 3.9}
TARGET_STEP_S = {"fp32": 7.0, "bf16": 2.8}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/original_baseline.yaml")
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--size", default="640x480")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per precision")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--src", default=None, help="time the package found under this directory instead")
    parser.add_argument("--profile", action="store_true", help="print the profiler's top operators of a step")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))

    print("command:", shlex.join([os.path.basename(sys.executable), *sys.argv]))
    print(f"machine: {cpu_name()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}")
    for precision in args.precision:
        config = load_config(args.config, ["train.device=cpu", f"train.precision={precision}", *args.overrides])
        if args.profile:
            print(f"\n== profile, {precision} ==")
            print(profile_train_step(config, (width, height), batch=args.batch, steps=1, warmup=1, row_limit=25))
            continue
        medians, cpu, steps = [], [], []
        for i in range(args.repeats):
            r = bench_isolated(config, threads=args.threads, extra_path=args.src, size=(width, height),
                               batch=args.batch, steps=args.steps, warmup=args.warmup, infer=False)
            medians.append(r["train_step_s"])
            cpu.append(r["train_step_cpu_s"])
            steps += r["train_step_times_s"]
            print(f"  {precision} repeat {i + 1}: median step {r['train_step_s']:.2f} s "
                  f"(steps {', '.join(f'{t:.2f}' for t in r['train_step_times_s'])}; process CPU {r['train_step_cpu_s']:.2f} s; "
                  f"threads {r['threads']}; torch {r['torch']}; peak RSS {r['peak_mem_mb']:.0f} MB; "
                  f"load {os.getloadavg()[0]:.2f})")
            for note in r.get("notes", []):
                print(f"  note: {note}")
        median = statistics.median(medians)
        print(f"{precision}: median step {median:.2f} s = {args.batch / median:.2f} images/s "
              f"(min {min(steps):.2f}, max {max(steps):.2f} over {len(steps)} steps in {args.repeats} processes); "
              f"median process CPU time {statistics.median(cpu):.2f} s")
        ref = ORIGINAL_STEP_S.get(precision)
        if ref:
            print(f"  original code (ORIGINAL.md, not measured here): ~{ref} s -> ratio {ref / median:.2f}x; "
                  f"target <= {TARGET_STEP_S[precision]} s")


if __name__ == "__main__":
    main()
