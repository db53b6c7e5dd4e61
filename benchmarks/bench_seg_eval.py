"""Time COD evaluation: N ground-truth/prediction pairs through BinaryMetrics and PySODMetrics side by side.

Run by hand (not a test):  python benchmarks/bench_seg_eval.py [--images 2026] [--size 384] [--repeats 3]

Generates seeded 384x384 pairs in memory (COD10K's test set has 2,026 CAM images): 1-3 blobs of varied size
per GT, predictions from blurred, shifted, noisy copies of it (some empty, some perfect). Times the same
inputs through :class:`~crossattentiondet.segmentation.metrics.BinaryMetrics` (all 11 COD metrics, IoU and
Dice included) and through PySODMetrics' Smeasure, Emeasure, WeightedFmeasure, MAE and Fmeasure (the set COD
toolkits run), ``--repeats`` times each, alternating; prints wall and CPU-time medians and checks that the
numbers agree to 1e-6 (exit status 1 if not). OpenCV runs single-threaded, as it does in the project.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import time
import warnings

import cv2
import numpy as np

from crossattentiondet.engine.bench import cpu_name
from crossattentiondet.segmentation.metrics import BinaryMetrics

SHARED = ("Smeasure", "meanEm", "maxEm", "adpEm", "wFmeasure", "MAE", "maxFm", "meanFm", "adpFm")


def make_pairs(images: int, size: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """(pred, gt) uint8 pairs: GT 0/255 blobs; predictions of varied quality (blur, shift, noise)."""
    rng = np.random.default_rng(seed)
    pairs = []
    for i in range(images):
        gt = np.zeros((size, size), np.uint8)
        for _ in range(int(rng.integers(1, 4))):
            center = (int(rng.integers(size // 5, 4 * size // 5)), int(rng.integers(size // 5, 4 * size // 5)))
            axes = (int(rng.integers(size // 40, size // 3)), int(rng.integers(size // 40, size // 3)))
            cv2.ellipse(gt, center, axes, float(rng.uniform(0, 180)), 0, 360, 255, -1)
        if i % 50 == 0:
            pred = np.zeros_like(gt)  # a missed object
        elif i % 50 == 1:
            pred = gt.copy()  # a perfect map
        else:
            shift = rng.integers(-size // 20, size // 20 + 1, 2)
            moved = np.roll(gt, tuple(int(s) for s in shift), axis=(0, 1)).astype(np.float32)
            noisy = cv2.GaussianBlur(moved, (0, 0), float(rng.uniform(1, 8))) * float(rng.uniform(0.5, 1.0))
            noisy += rng.normal(0, float(rng.uniform(2, 40)), gt.shape).astype(np.float32)
            pred = np.clip(noisy, 0, 255).astype(np.uint8)
        pairs.append((pred, gt))
    return pairs


def run_ours(pairs: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    metrics = BinaryMetrics()
    for i, (pred, gt) in enumerate(pairs):
        metrics.update(pred, gt, name=str(i))
    return metrics.results()


def run_reference(pairs: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    import py_sod_metrics as sod

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Fmeasure's deprecation notice
        s, e, wf, mae, f = sod.Smeasure(), sod.Emeasure(), sod.WeightedFmeasure(), sod.MAE(), sod.Fmeasure()
        for pred, gt in pairs:
            for metric in (s, e, wf, mae, f):
                metric.step(pred, gt)
    em, fm = e.get_results()["em"], f.get_results()["fm"]
    return {"Smeasure": s.get_results()["sm"], "meanEm": em["curve"].mean(), "maxEm": em["curve"].max(),
            "adpEm": em["adp"], "wFmeasure": wf.get_results()["wfm"], "MAE": mae.get_results()["mae"],
            "maxFm": fm["curve"].max(), "meanFm": fm["curve"].mean(), "adpFm": fm["adp"]}


def timed(fn, pairs) -> tuple[dict[str, float], float, float]:
    """(result, wall seconds, CPU seconds of this process)."""
    t0, c0 = time.perf_counter(), time.process_time()
    result = fn(pairs)
    return result, time.perf_counter() - t0, time.process_time() - c0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2026)
    parser.add_argument("--size", type=int, default=384)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-reference", action="store_true", help="time BinaryMetrics only")
    args = parser.parse_args(argv)
    cv2.setNumThreads(0)  # as crossattentiondet.data.imageio does: one thread, like the reference's code

    print("command:", shlex.join([os.path.basename(sys.executable), "benchmarks/bench_seg_eval.py",
                                  *(sys.argv[1:] if argv is None else argv)]))
    print(f"machine: {cpu_name()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}")
    t0 = time.perf_counter()
    pairs = make_pairs(args.images, args.size, args.seed)
    print(f"{args.images} pairs of {args.size}x{args.size} generated in {time.perf_counter() - t0:.1f} s")

    times: dict[str, list[tuple[float, float]]] = {"BinaryMetrics": [], "PySODMetrics": []}
    ours = reference = None
    for _ in range(args.repeats):
        ours, wall, cpu = timed(run_ours, pairs)
        times["BinaryMetrics"].append((wall, cpu))
        if not args.skip_reference:
            reference, wall, cpu = timed(run_reference, pairs)
            times["PySODMetrics"].append((wall, cpu))
    for name, runs in times.items():
        if not runs:
            continue
        walls, cpus = [w for w, _ in runs], [c for _, c in runs]
        print(f"{name:14s} wall median {statistics.median(walls):7.2f} s  CPU median {statistics.median(cpus):7.2f} s"
              f"  ({1e3 * statistics.median(walls) / args.images:.2f} ms/image)  runs {[round(w, 2) for w in walls]}")
    if reference is None:
        return 0
    speedup = statistics.median(w for w, _ in times["PySODMetrics"]) / statistics.median(
        w for w, _ in times["BinaryMetrics"])
    print(f"speed-up (wall medians): {speedup:.1f}x")
    diffs = {k: abs(float(ours[k]) - float(reference[k])) for k in SHARED}
    worst = max(diffs, key=diffs.get)
    agree = all(d <= 1e-6 for d in diffs.values())
    print(f"numbers agree to 1e-6: {agree} (largest difference {diffs[worst]:.2e}, {worst})")
    print("BinaryMetrics:", {k: round(float(v), 4) for k, v in ours.items()})
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
