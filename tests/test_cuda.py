"""Device code on a GPU: training steps in every precision, CPU/CUDA agreement, RoI pooling, a tiny run, bench.

Marked ``cuda`` and skipped without a CUDA device (CI has none): ``pytest -m cuda`` on a GPU machine, which
``benchmarks/gpu_check.sh`` does.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from torchvision.ops import MultiScaleRoIAlign

from crossattentiondet.config import load_config
from crossattentiondet.engine.bench import bench, make_train_step, random_batch
from crossattentiondet.engine.checkpoint import load_checkpoint
from crossattentiondet.engine.trainer import train
from crossattentiondet.models import build_detector
from crossattentiondet.models.roi_pool import SparseMultiScaleRoIAlign
from tests.test_train import TINY, cfg, frames

pytestmark = pytest.mark.cuda

MODEL = [o for o in TINY if o.startswith("model.")]


@pytest.fixture
def cuda() -> torch.device:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    return torch.device("cuda")


@pytest.fixture
def data_root(trees) -> Path:
    return trees.npy("data", frames=frames(10), size=(64, 64), classes=["person", "car"])


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_training_steps_on_cuda(cuda: torch.device, precision: str) -> None:
    torch.manual_seed(0)
    config = load_config(None, [*MODEL, "train.device=cuda", f"train.precision={precision}"])
    model = build_detector(config, 2, load_pretrained=False).to(cuda).train()
    images, targets = random_batch(model.layout.total_channels, (96, 64), 2, 2, cuda, 0)
    assert images[0].dtype == torch.uint8 and images[0].device.type == cuda.type  # normalised on the device by the model
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    step = make_train_step(model, config, images, targets, cuda)
    losses = [step() for _ in range(3)]
    assert all(torch.isfinite(torch.tensor(losses))), losses
    changed = [n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])]
    assert changed and all(torch.isfinite(p).all() for p in model.parameters())
    model.eval()
    with torch.inference_mode():
        out = model(images)
    assert len(out) == 2 and out[0]["boxes"].device.type == cuda.type


def test_cuda_features_match_cpu(cuda: torch.device) -> None:
    torch.manual_seed(0)
    config = load_config(None, MODEL)
    model = build_detector(config, 2, load_pretrained=False).eval()
    images = [torch.randint(0, 256, (5, 64, 96), dtype=torch.uint8) for _ in range(2)]
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.no_grad():
            batch, _ = model.transform(images)
            expected = model.backbone(batch.tensors)
            model.to(cuda)
            batch_cuda, _ = model.transform([i.to(cuda) for i in images])
            got = model.backbone(batch_cuda.tensors)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    assert list(got) == list(expected)
    for key in expected:
        torch.testing.assert_close(got[key].cpu(), expected[key], atol=1e-4, rtol=1e-4)


def test_roi_pooling_on_cuda_is_torchvisions(cuda: torch.device) -> None:
    torch.manual_seed(0)
    names = ["0", "1", "2", "3", "pool"]
    feats = OrderedDict((n, torch.randn(2, 4, 64 // 2**i, 96 // 2**i, device=cuda)) for i, n in enumerate(names))
    xy = torch.rand(40, 2, device=cuda) * torch.tensor([300.0, 200.0], device=cuda)
    boxes = torch.cat((xy, xy + torch.rand(40, 2, device=cuda) * 100 + 1), dim=1)
    per_image, shapes = [boxes[:25], boxes[25:]], [(256, 384)] * 2
    ours = SparseMultiScaleRoIAlign(names, 7, 2)(feats, per_image, shapes)
    reference = MultiScaleRoIAlign(names, 7, 2)(feats, per_image, shapes)
    assert ours.device.type == cuda.type
    torch.testing.assert_close(ours, reference)


def test_tiny_run_on_cuda_stops_and_resumes(cuda: torch.device, data_root: Path, tmp_path: Path) -> None:
    config = cfg(data_root, tmp_path, "name=gpu", "train.epochs=2", "train.device=cuda", "train.precision=bf16",
                 "train.max_iters_per_epoch=2")
    first = train(config, stop_after_epoch=1)
    assert not first.finished and first.state.epoch == 1
    result = train(config, resume=True)
    assert result.finished and result.state.epoch == 2 and "mAP" in result.test_metrics
    checkpoint = load_checkpoint(result.run_dir / "checkpoints" / "best.pt")  # loads on the CPU
    assert all(not v.is_cuda for v in checkpoint["model"].values() if isinstance(v, torch.Tensor))


def test_bench_on_cuda_reports_cuda_memory(cuda: torch.device) -> None:
    config = load_config(None, [*MODEL, "train.device=cuda", "train.precision=bf16"])
    report = bench(config, (96, 64), batch=2, steps=2, warmup=1, images=10, runs=1)
    assert report["device"].startswith("cuda") and report["peak_mem_mb"] > 0 and report["train_step_s"] > 0
