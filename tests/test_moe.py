"""Mixture-of-experts neck (segmentation/moe.py): routing, batched dispatch, losses, load statistics."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from crossattentiondet.config import MoEConfig
from crossattentiondet.segmentation.moe import (
    EXPERTS,
    ChannelSpatialAttention,
    MoELayer,
    MoENeck,
    describe_stats,
    load_stats,
)

CHANNELS = [8, 16, 24, 32]
SIZES = [16, 8, 4, 3]


def config(**kwargs) -> MoEConfig:  # noqa: ANN003
    return MoEConfig(enabled=True, **kwargs)


def varied(batch: int, channels: int, size: int) -> torch.Tensor:
    """Images whose pooled features differ (a per-image offset + noise), so routers see distinct inputs."""
    return torch.randn(batch, channels, 1, 1) + 0.1 * torch.randn(batch, channels, size, size)


def feats(batch: int = 2) -> list[torch.Tensor]:
    return [torch.randn(batch, c, s, s) for c, s in zip(CHANNELS, SIZES, strict=True)]


def cv(counts: torch.Tensor) -> float:
    c = counts.float()
    return float(c.std(unbiased=False) / c.mean())


@pytest.mark.parametrize(("experts", "top_k", "k"), [(7, None, 3), (2, None, 2), (1, None, 1), (4, None, 2),
                                                     (7, 5, 5)])
def test_top_k_default(experts: int, top_k: int | None, k: int) -> None:
    cfg = config(num_experts=experts, top_k=top_k)
    assert cfg.k == k
    assert MoELayer(8, cfg).k == k


def test_experts_cycle_over_types() -> None:
    layer = MoELayer(8, config(num_experts=5, experts=["edge", "context"]))
    assert layer.expert_names == ["edge", "context", "edge", "context", "edge"]
    assert [type(e) for e in layer.experts] == [EXPERTS[n] for n in layer.expert_names]


@pytest.mark.parametrize("name", sorted(EXPERTS))
@pytest.mark.parametrize("size", [(9, 11), (3, 3), (1, 1)])
def test_expert_shape_finite_gradient(name: str, size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    expert = EXPERTS[name](8)
    x = torch.randn(2, 8, *size, requires_grad=True)
    y = expert(x)
    assert y.shape == x.shape
    assert torch.isfinite(y).all()
    (y * torch.randn_like(y)).sum().backward()  # a random projection: a plain sum is blind behind GroupNorm
    assert x.grad is not None and torch.isfinite(x.grad).all()
    if size == (1, 1):  # a single pixel: GroupNorm statistics are degenerate; only ask for finite gradients
        return
    for pname, p in expert.named_parameters():
        assert p.grad is not None, f"{name}.{pname}: no gradient"
        assert torch.isfinite(p.grad).all(), f"{name}.{pname}: non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{name}.{pname}: zero gradient"


def test_frequency_expert_odd_sizes_and_filter() -> None:
    expert = EXPERTS["frequency"](4)
    for h, w in [(7, 5), (5, 8), (1, 6), (13, 1)]:
        x = torch.randn(2, 4, h, w)
        assert expert(x).shape == (2, 4, h, w)
    # all-pass gains at the start: the filtered signal is x itself (FFT -> gain 1 -> inverse FFT)
    x = torch.randn(1, 4, 7, 5)
    spectrum = torch.fft.rfft2(x, norm="ortho")
    assert torch.allclose(torch.fft.irfft2(spectrum, s=(7, 5), norm="ortho"), x, atol=1e-5)


def test_channel_spatial_attention() -> None:
    block = ChannelSpatialAttention(16, 8)
    x = torch.randn(2, 16, 5, 7)
    y = block(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    assert block.channel_gate.reduce.out_channels == 4  # max(16 // 8, 4)


def test_dispatch_equals_dense_reference() -> None:
    torch.manual_seed(0)
    layer = MoELayer(8, config(num_experts=7, top_k=3)).eval()
    x = varied(5, 8, 8)
    routing = layer.route(x)
    assert routing.indices.shape == (5, 3)
    assert len(set(routing.indices.flatten().tolist())) > 3  # the images do not all choose the same experts
    with torch.no_grad():
        batched, dense = layer(x), layer.dense_reference(x)
    assert torch.allclose(batched, dense, rtol=1e-5, atol=1e-6), (batched - dense).abs().max()
    gates = routing.gates(7)
    assert torch.allclose(gates.sum(1), torch.ones(5))
    assert ((gates > 0).sum(1) == 3).all()


def test_dispatch_gradients_equal_dense_reference() -> None:
    torch.manual_seed(1)
    layer = MoELayer(8, config(num_experts=4, top_k=2))
    x = varied(3, 8, 6)
    weight = torch.randn(3, 8, 6, 6)
    grads = []
    for fn in (lambda: layer.dispatch(x, layer.route(x)), lambda: layer.dense_reference(x)):
        layer.zero_grad(set_to_none=True)
        (fn() * weight).sum().backward()
        grads.append({n: p.grad.clone() if p.grad is not None else torch.zeros_like(p)
                      for n, p in layer.named_parameters()})
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-6), name
    assert grads[0]["router.weight"].abs().sum() > 0  # the task loss reaches the router via the top-k weights


def test_balance_loss_reaches_router() -> None:
    torch.manual_seed(0)
    layer = MoELayer(8, config())
    layer(varied(4, 8, 8))
    layer.last["balance"].backward()
    grad = layer.router.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert all(p.grad is None for p in layer.experts.parameters())  # the balance loss touches only the router


def test_z_loss_reaches_router() -> None:
    layer = MoELayer(8, config())
    layer(varied(4, 8, 8))
    z = layer.last["z"]
    assert z > 0
    z.backward()
    assert layer.router.bias.grad.abs().sum() > 0


def test_balance_loss_training_balances_the_load() -> None:
    torch.manual_seed(0)
    layer = MoELayer(8, config(num_experts=7))
    with torch.no_grad():  # experts 0 and 1 win every image
        layer.router.bias.copy_(torch.tensor([4.0, 4.0, 0, 0, 0, 0, 0]))
    cvs, losses = [], []
    for _ in range(40):  # plain gradient descent on the router alone (torch.optim's first use costs 2 s)
        aux = layer.aux(layer.route(varied(16, 8, 4)))
        layer.zero_grad()
        aux["balance"].backward()
        with torch.no_grad():
            for p in layer.router.parameters():
                p -= 2.0 * p.grad
        cvs.append(cv(aux["counts"]))
        losses.append(aux["balance"].item())
    first_cv, last_cv = sum(cvs[:5]) / 5, sum(cvs[-10:]) / 10
    first_loss, last_loss = sum(losses[:5]) / 5, sum(losses[-10:]) / 10
    assert first_cv > 0.8 and first_loss > 2.0  # the biased start: loss 1 means balanced
    assert last_cv < 0.6 * first_cv, (first_cv, last_cv)
    assert last_loss < 1.3, (first_loss, last_loss)


def test_noisy_gating_train_random_eval_deterministic() -> None:
    torch.manual_seed(0)
    layer = MoELayer(8, config(noisy_gating=True))
    x = varied(4, 8, 6)
    with torch.no_grad():
        torch.manual_seed(1)
        a = layer(x)
        torch.manual_seed(2)
        b = layer(x)
        assert not torch.allclose(a, b)
        layer.eval()
        torch.manual_seed(1)
        c = layer(x)
        torch.manual_seed(2)
        d = layer(x)
    assert torch.equal(c, d)
    routing = layer.route(x)
    assert torch.equal(routing.logits, routing.clean_logits)  # no noise in eval


def test_noise_scale_is_learned() -> None:
    layer = MoELayer(8, config(noisy_gating=True))
    layer(varied(4, 8, 6))
    layer.last["balance"].backward()
    assert layer.noise.weight.grad.abs().sum() > 0


def test_load_counts_accumulate_and_pop() -> None:
    layer = MoELayer(8, config(num_experts=7))
    x = varied(5, 8, 4)
    layer(x)
    assert layer.last["counts"].sum() == 5 * 3
    assert layer.load().sum() == 15
    layer(x)
    counts = layer.pop_load()
    assert counts.shape == (7,) and counts.sum() == 30
    assert layer.pop_load().sum() == 0
    layer.eval()
    layer(x)  # evaluation does not count
    assert layer.load().sum() == 0


def test_load_stats() -> None:
    empty = torch.zeros(4, dtype=torch.long)
    stats = load_stats([torch.tensor([2, 2, 0, 0]), torch.tensor([3, 3, 3, 3]), empty])
    assert [stats[f"moe1_e{e}"] for e in range(4)] == [0.5, 0.5, 0.0, 0.0]
    assert stats["moe1_cv"] == pytest.approx(1.0)  # mean 1, population std 1
    assert stats["moe2_cv"] == 0.0 and stats["moe2_e3"] == 0.25
    assert math.isnan(stats["moe3_e0"]) and math.isnan(stats["moe3_cv"])
    assert len(stats) == 3 * 5


def test_neck_shapes_losses_and_stats() -> None:
    torch.manual_seed(0)
    neck = MoENeck(CHANNELS, config(balance_weight=0.5, z_weight=0.25))
    inputs = feats(3)
    outputs = neck(inputs)
    assert [o.shape for o in outputs] == [f.shape for f in inputs]
    losses = neck.aux_losses()
    assert set(losses) == {"loss_moe_balance", "loss_moe_z"}
    balance = torch.stack([layer.last["balance"] for layer in neck.layers]).mean()
    assert torch.allclose(losses["loss_moe_balance"], 0.5 * balance)
    assert all(v.requires_grad and v.dim() == 0 for v in losses.values())
    sum(losses.values()).backward()
    assert all(layer.router.weight.grad.abs().sum() > 0 for layer in neck.layers)
    counts = neck.load_counts()
    assert [int(c.sum()) for c in counts] == [9] * 4
    stats = neck.pop_epoch_stats()
    keys = {f"moe{s}_e{e}" for s in range(1, 5) for e in range(7)} | {f"moe{s}_cv" for s in range(1, 5)}
    assert set(stats) == keys
    assert sum(stats[f"moe1_e{e}"] for e in range(7)) == pytest.approx(1.0)
    assert all(int(c.sum()) == 0 for c in neck.load_counts())
    assert describe_stats(stats).startswith("MoE load: scale 1 cv ")
    neck(inputs)
    doubled = neck.pop_epoch_stats(lambda c: 2 * c)  # the trainer's DDP all-reduce goes here
    assert sum(doubled[f"moe2_e{e}"] for e in range(7)) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="scales"):
        neck(inputs[:3])


def test_neck_aux_before_forward() -> None:
    with pytest.raises(RuntimeError, match="forward"):
        MoENeck(CHANNELS, config()).aux_losses()


def test_neck_channels_last_and_deepcopy() -> None:
    torch.manual_seed(0)
    neck = MoENeck(CHANNELS, config())
    inputs = feats(2)
    reference = [o.detach() for o in neck.eval()(inputs)]
    outputs = neck([f.to(memory_format=torch.channels_last) for f in inputs])
    assert all(torch.allclose(o, r, atol=1e-5) for o, r in zip(outputs, reference, strict=True))
    neck.train()(inputs)  # leaves non-leaf losses and counts on the layers: the EMA's deepcopy must cope
    twin = copy.deepcopy(neck)
    assert all(not layer.last and int(layer.load().sum()) == 0 for layer in twin.layers)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_neck_autocast_bf16(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    neck = MoENeck(CHANNELS, config(noisy_gating=True))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outputs = neck([f.to(dtype) for f in feats(2)])
        losses = neck.aux_losses()
    assert all(torch.isfinite(o.float()).all() for o in outputs)
    assert all(o.dtype == dtype for o in outputs)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_neck_cuda_autocast() -> None:
    neck = MoENeck(CHANNELS, config(noisy_gating=True)).cuda()
    inputs = [f.cuda() for f in feats(2)]
    with torch.autocast("cuda", dtype=torch.bfloat16):
        outputs = neck(inputs)
        loss = sum(o.float().square().mean() for o in outputs) + sum(neck.aux_losses().values())
    loss.backward()
    assert all(torch.isfinite(o.float()).all() for o in outputs)
    assert all(c.device.type == "cuda" and int(c.sum()) == 6 for c in neck.load_counts())
    neck.eval()
    with torch.no_grad():
        x = varied(5, 8, 8).cuda()
        assert torch.allclose(neck.layers[0](x), neck.layers[0].dense_reference(x), atol=1e-4)
