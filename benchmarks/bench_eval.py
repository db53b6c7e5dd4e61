"""Time COCO evaluation: N images x D detections through :class:`DetectionEvaluator`.

Run by hand (not a test):  python benchmarks/bench_eval.py [--images 2000] [--dets 100] [--repeats 3]

Reports the median over ``--repeats`` runs of ``compute()`` (COCO structures + faster-coco-eval), and of
the ``update()`` calls that happen batch by batch during an evaluation. Target: compute under 2 s for
2,000 images x 100 detections on the 2-core CPU machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np
import torch

from crossattentiondet.engine.evaluate import DetectionEvaluator


def make_batches(images: int, dets: int, classes: int, batch: int, seed: int = 0) -> list[tuple]:
    """Synthetic loader-like batches: 0-6 ground-truth boxes per image, ``dets`` detections each, a third
    of them jittered copies of the ground truth (true positives), the rest random (false positives)."""
    rng = np.random.default_rng(seed)
    out = []
    for start in range(0, images, batch):
        targets, outputs, metas = [], [], []
        for image_id in range(start, min(start + batch, images)):
            n = int(rng.integers(0, 7))
            wh = rng.uniform(8, 200, (n, 2))
            xy = rng.uniform(0, 400, (n, 2))
            gt = np.concatenate([xy, xy + wh], 1)
            k = dets // 3
            src = gt[rng.integers(0, n, k)] if n else rng.uniform(0, 400, (k, 4))
            tp = src + rng.normal(0, 3, (k, 4))
            fp_xy = rng.uniform(0, 500, (dets - k, 2))
            fp = np.concatenate([fp_xy, fp_xy + rng.uniform(5, 150, (dets - k, 2))], 1)
            boxes = np.concatenate([tp, fp]).astype(np.float32)
            boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
            targets.append({"boxes": torch.from_numpy(gt.astype(np.float32)),
                            "labels": torch.from_numpy(rng.integers(1, classes + 1, n)),
                            "image_id": torch.tensor(image_id)})
            outputs.append({"boxes": torch.from_numpy(boxes),
                            "scores": torch.from_numpy(rng.random(dets).astype(np.float32)),
                            "labels": torch.from_numpy(rng.integers(1, classes + 1, dets))})
            metas.append({"stem": f"img{image_id:05d}", "image_id": image_id, "height": 480, "width": 640})
        out.append((targets, outputs, metas))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--dets", type=int, default=100)
    parser.add_argument("--classes", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    batches = make_batches(args.images, args.dets, args.classes, args.batch)
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    names = [f"class{i}" for i in range(1, args.classes + 1)]
    update_s, compute_s, compute_cpu_s = [], [], []
    for _ in range(args.repeats):
        evaluator = DetectionEvaluator(names)
        t0 = time.perf_counter()
        for targets, outputs, metas in batches:
            evaluator.update(targets, outputs, metas)
        t1 = time.perf_counter()
        c1 = time.process_time()
        result = evaluator.compute()
        t2 = time.perf_counter()
        compute_cpu_s.append(time.process_time() - c1)
        update_s.append(t1 - t0)
        compute_s.append(t2 - t1)

    print(f"command: python {' '.join(sys.argv)}")
    print(f"{args.images} images x {args.dets} detections ({len(result.predictions)} detections, "
          f"{result.num_ground_truth} ground-truth boxes, {args.classes} classes); mAP={result.metrics['mAP']:.4f}")
    print(f"update (all batches): median {statistics.median(update_s):.3f} s  runs {[round(t, 3) for t in update_s]}")
    print(f"compute:              median {statistics.median(compute_s):.3f} s  runs {[round(t, 3) for t in compute_s]}")
    # CPU time of this process: close to the wall time on an idle machine, and much less inflated than
    # wall time when other jobs share the cores (compare wall times only between quiet runs)
    print(f"compute CPU time:     median {statistics.median(compute_cpu_s):.3f} s  "
          f"runs {[round(t, 3) for t in compute_cpu_s]}")
    print(f"load average (1 min) at start: {load_before:.2f} on {os.cpu_count()} cores")
    total = [u + c for u, c in zip(update_s, compute_s)]
    print(f"update + compute:     median {statistics.median(total):.3f} s")


if __name__ == "__main__":
    main()
