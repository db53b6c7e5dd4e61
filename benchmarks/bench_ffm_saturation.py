"""FFM context-softmax saturation at initialisation: the original's init vs PyTorch's default init.

Run by hand (seconds to a minute), not a test:

    python benchmarks/bench_ffm_saturation.py [--sizes 160x128 640x480] [--images 4]

For each input size: synthetic RGB + thermal + event frames (data/synth.py, normalised as the model does),
the demo's narrow encoder and the mit_b1 encoder of the original baseline, random weights from seed 0. It
prints, per FFM stage, the share of softmax columns whose largest weight exceeds 0.99, once with the fusion
modules initialised as the original (``segformer_init``: trunc-normal std 0.02 linears) and once with
PyTorch's default ``reset_parameters`` (what this project used before).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from crossattentiondet.config import load_config
from crossattentiondet.data.synth import generate_dataset
from crossattentiondet.models.detector import InputLayout, build_encoder
from crossattentiondet.models.fusion.frm_ffm import FrmFfmFusion, ffm_softmax_saturation

CONFIGS = {"demo": ("preset:demo", []), "mit_b1": ("configs/original_baseline.yaml", [])}


def frames(size: tuple[int, int], count: int, layout: InputLayout) -> torch.Tensor:
    """(count, 5, H, W) synthetic frames normalised per channel with the layout's scale/mean/std."""
    with tempfile.TemporaryDirectory() as tmp:
        generate_dataset(Path(tmp), count, size, 3, "npy", 0)
        arrays = [np.load(p) for p in sorted(Path(tmp, "images").glob("*.npy"))]
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float()
    scale = torch.tensor([s or 255.0 for s in layout.scale]).view(1, -1, 1, 1)
    mean = torch.tensor(layout.mean).view(1, -1, 1, 1)
    std = torch.tensor(layout.std).view(1, -1, 1, 1)
    return (x / scale - mean) / std


def default_init(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, FrmFfmFusion):
            for sub in m.modules():
                if sub is not m and hasattr(sub, "reset_parameters"):
                    sub.reset_parameters()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["160x128", "640x480"])
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    args = parser.parse_args()
    print("| encoder | input | init | saturated columns per stage (share > 0.99) |")
    print("|---|---|---|---|")
    for name in args.configs:
        path, overrides = CONFIGS[name]
        config = load_config(path, [*overrides, "model.num_classes=1"])
        layout = InputLayout.from_config(config)
        for text in args.sizes:
            w, h = (int(v) for v in text.split("x"))
            x = frames((w, h), args.images, layout)
            x1, x2 = x[:, list(layout.stream_channels[0])], x[:, list(layout.stream_channels[1])]
            for init in ("original (trunc-normal 0.02)", "PyTorch default"):
                torch.manual_seed(0)
                encoder = build_encoder(config, layout).eval()
                if init == "PyTorch default":
                    default_init(encoder)
                shares = ffm_softmax_saturation(encoder, x1, x2)
                cells = ", ".join(f"{s:.0%}" for s in shares)
                print(f"| {name} | {w}x{h} | {init} | {cells} (mean {np.mean(shares):.0%}) |", flush=True)


if __name__ == "__main__":
    main()
