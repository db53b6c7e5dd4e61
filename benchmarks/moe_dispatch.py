"""MoE neck (segmentation/moe.py): batched expert dispatch vs camoXpert's per-sample loop, one process.

Run by hand (minutes on a CPU at the defaults), not a test:

    python benchmarks/moe_dispatch.py [--batch 8] [--size 384] [--experts 7] [--top-k 3] [--repeats 5]
        [--warmup 1] [--device cpu|cuda] [--threads N] [--quick]

The input is edgenext_base's four feature maps for a ``--size`` x ``--size`` frame (80/160/288/584 channels at
strides 4/8/16/32: 96, 48, 24 and 12 px at 384), random values, fp32, random weights (seed 0). One step =
the neck's forward (channel + spatial attention, router, experts on every scale) + a stand-in loss (mean
square of the outputs + the router losses) + backward. Both variants share the same modules and the same
router decisions; they differ only in how the chosen experts are run:

* batched: :meth:`MoELayer.dispatch`, every expert once on the sub-batch of images that chose it;
* per-sample: camoXpert's loop, for each image, for each of its top-k experts, the expert on that one image,
  weight x output summed into the image's result.

Prints the median step time of ``--repeats`` timed steps after ``--warmup`` untimed ones, the speed-up, the
largest absolute difference of the two variants' outputs (eval mode, no gradients), the machine, and one
markdown table row for benchmarks/RESULTS.md. ``--quick``: batch 2, 64 px, 1 warm-up, 2 repeats (a smoke
check, under a minute).
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import time
from collections.abc import Callable

import torch
from torch import Tensor

from crossattentiondet.config import MoEConfig
from crossattentiondet.engine.bench import cpu_name
from crossattentiondet.segmentation.moe import MoELayer, MoENeck, Routing

EDGENEXT_BASE = [(80, 4), (160, 8), (288, 16), (584, 32)]  # (channels, stride) of the four maps


def per_sample_dispatch(layer: MoELayer, x: Tensor, routing: Routing) -> Tensor:
    """camoXpert's way: per image, per chosen expert, the expert on a batch of one."""
    indices, weights = routing.indices.tolist(), routing.weights
    rows = []
    for b in range(x.shape[0]):
        image = x[b:b + 1]
        out = torch.zeros_like(image, dtype=torch.float32)
        for j, e in enumerate(indices[b]):
            out = out + weights[b, j] * layer.experts[e](image).float()
        rows.append(out.to(x.dtype))
    return torch.cat(rows)


def neck_forward(neck: MoENeck, feats: list[Tensor], per_sample: bool) -> list[Tensor]:
    if not per_sample:
        return neck(feats)
    outputs = []
    for f, attn, layer in zip(feats, neck.attention, neck.layers, strict=True):
        y = attn(f)
        routing = layer.route(y)
        layer.last = layer.aux(routing)  # the same router losses as the batched forward
        outputs.append(per_sample_dispatch(layer, y, routing))
    return outputs


def step(neck: MoENeck, feats: list[Tensor], per_sample: bool) -> None:
    neck.zero_grad(set_to_none=True)
    outputs = neck_forward(neck, feats, per_sample)
    loss = sum(o.float().square().mean() for o in outputs) + sum(neck.aux_losses().values())
    loss.backward()


def timed(fn: Callable[[], None], repeats: int, warmup: int, device: torch.device) -> list[float]:
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=384, help="input frame side (px); maps at strides 4-32")
    parser.add_argument("--experts", type=int, default=7)
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--quick", action="store_true", help="batch 2, 64 px, 2 repeats: a smoke check")
    args = parser.parse_args()
    if args.quick:
        args.batch, args.size, args.repeats, args.warmup = 2, 64, 2, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print("command:", shlex.join([os.path.basename(sys.executable), *sys.argv]))
    gpu = f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    load = f", load average {os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else ""
    print(f"machine: {cpu_name()}, {os.cpu_count()} cores{gpu}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads{load}")

    torch.manual_seed(0)
    config = MoEConfig(enabled=True, num_experts=args.experts, top_k=args.top_k)
    neck = MoENeck([c for c, _ in EDGENEXT_BASE], config).to(device)
    feats = [torch.randn(args.batch, c, max(args.size // s, 1), max(args.size // s, 1), device=device)
             for c, s in EDGENEXT_BASE]
    shapes = ", ".join(f"{f.shape[1]}x{f.shape[2]}x{f.shape[3]}" for f in feats)
    params = sum(p.numel() for p in neck.parameters())
    print(f"neck: {args.experts} experts ({', '.join(neck.layers[0].expert_names)}), top-{config.k}, "
          f"{params / 1e6:.1f} M parameters; batch {args.batch}, maps {shapes}, fp32")

    neck.eval()
    with torch.no_grad():
        batched = neck_forward(neck, feats, per_sample=False)
        looped = neck_forward(neck, feats, per_sample=True)
    diff = max(float((a - b).abs().max()) for a, b in zip(batched, looped, strict=True))
    print(f"max abs diff of the outputs (eval): {diff:.2e}")
    del batched, looped

    neck.train()
    results = {}
    for name, per_sample in (("batched", False), ("per-sample", True)):
        def run(per_sample: bool = per_sample) -> None:
            step(neck, feats, per_sample)

        times = timed(run, args.repeats, args.warmup, device)
        results[name] = statistics.median(times)
        print(f"{name}: forward+backward {results[name]:.3f} s (median of {args.repeats}: "
              f"{', '.join(f'{t:.3f}' for t in times)})", flush=True)
    speedup = results["per-sample"] / results["batched"]
    print(f"speed-up of the batched dispatch: {speedup:.2f}x")
    print("| device | batch | size | experts | top-k | batched (s) | per-sample (s) | speed-up "
          "| max abs diff |")
    print(f"| {cpu_name() if device.type == 'cpu' else torch.cuda.get_device_name(device)}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__} | {args.batch} | {args.size} | "
          f"{args.experts} | {config.k} | {results['batched']:.3f} | {results['per-sample']:.3f} | "
          f"{speedup:.2f}x | {diff:.1e} |")


if __name__ == "__main__":
    main()
