"""Device, precision, seeding and distributed helpers (generic: CPU, one GPU, torchrun DDP)."""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from crossattentiondet.config import ConfigError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_spec: str = "auto") -> DistInfo:
    """Join the process group when launched by ``torchrun`` (WORLD_SIZE > 1); NCCL on CUDA, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        use_cuda = torch.cuda.is_available() and device_spec != "cpu"
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistInfo(rank, world, local_rank)


def resolve_device(spec: str, info: DistInfo | None = None) -> torch.device:
    """``auto`` -> the local GPU when there is one, else CPU; a clear error for an unavailable device."""
    info = info or DistInfo()
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"train.device={spec}: CUDA is not available on this machine (use cpu or auto)")
        if spec == "cuda":
            return torch.device("cuda", info.local_rank)
        return torch.device(spec)
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "mps" and torch.backends.mps.is_available():
        return torch.device("mps")
    raise ConfigError(f"train.device={spec!r} is not a usable device (auto, cpu, cuda, cuda:N)")


def check_precision(precision: str, device: torch.device) -> None:
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("train.precision=fp16 needs a CUDA device; on the CPU use bf16 (fast on AMX CPUs) or fp32")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("train.precision=bf16: this GPU has no bf16 support; use fp16")


def cpu_has_native_bf16() -> bool:
    """True when oneDNN has bf16 matmul/conv kernels on this CPU (AVX512-BF16 or AMX); else bf16 is emulated."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # older/newer torch without these probes: do not guess
        return True


def precision_notes(device: torch.device, precision: str) -> list[str]:
    """Warnings a user should see next to the timings (e.g. bf16 on a CPU that emulates it)."""
    notes = []
    if device.type == "cpu" and precision == "bf16" and not cpu_has_native_bf16():
        notes.append("this CPU has no native bf16 (neither AVX512-BF16 nor AMX): bf16 matmuls and convolutions "
                     "are emulated and much slower than fp32 here; use train.precision=fp32 on this machine")
    return notes


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    """Mixed-precision context for the forward pass (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def configure_backends(tf32: bool, deterministic: bool, cudnn_benchmark: bool = False) -> list[str]:
    """Set the process-wide math backends for a run; returns notes for the run log.

    ``tf32``: TF32 matmuls and convolutions on Ampere+ GPUs. ``cudnn_benchmark``: cuDNN times the candidate
    convolution algorithms for each new input shape and keeps the fastest (``train.cudnn_benchmark``; cuDNN
    itself always stays enabled). ``deterministic`` wins over it: benchmarking picks algorithms by timing,
    which differs from run to run.
    """
    notes: list[str] = []
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    # set either way: the flag is process-wide, and a previous run in this process may have turned it on
    torch.backends.cudnn.benchmark = cudnn_benchmark and not deterministic
    if deterministic:
        if cudnn_benchmark:
            notes.append("train.cudnn_benchmark=true is ignored: train.deterministic=true needs cuDNN's "
                         "deterministic algorithms (benchmark off)")
        torch.use_deterministic_algorithms(True, warn_only=True)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    return notes


def _to_channels_last(args: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(a.contiguous(memory_format=torch.channels_last) if isinstance(a, torch.Tensor) and a.ndim == 4
                 else a for a in args)


def channels_last_inputs_hook(_module: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """Forward pre-hook: batched 4-D image tensors reach the module in channels_last memory format."""
    return _to_channels_last(args)


def use_channels_last(model: torch.nn.Module) -> torch.nn.Module:
    """``train.channels_last``: the weights *and* the inputs in channels_last memory format.

    Converting only the weights (the seed-003 project's bug) leaves the first convolution an NCHW input:
    cuDNN then converts at every layer boundary or falls back to NCHW kernels. The detector batches its
    images inside the model (after its transform), so the hook sits on the module that receives the batch,
    ``model.backbone`` (``model.encoder`` where there is no backbone; else the model itself). Hooks live on
    the module, not in its state dict: an EMA copy (deepcopy) keeps them, a checkpoint does not need them.
    """
    model = model.to(memory_format=torch.channels_last)
    target = next((m for m in (getattr(model, "backbone", None), getattr(model, "encoder", None))
                   if isinstance(m, torch.nn.Module)), model)
    if not getattr(target, "_channels_last_inputs", False):
        target.register_forward_pre_hook(channels_last_inputs_hook)
        target._channels_last_inputs = True  # type: ignore[assignment]  # once, whoever calls this again
    return model


def compile_backbone(model: torch.nn.Module, backend: str) -> None:
    """``torch.compile`` the detector's backbone forward in place (``train.compile``).

    Only the backbone (the encoder, + FPN for the Faster R-CNN): it sees a few image sizes, while the RPN/RoI
    heads have data-dependent shapes that would keep recompiling (as would the DETR head's per-batch
    denoising queries), so they stay eager. Used by training and by ``cadet bench`` alike.
    """
    model.backbone.forward = torch.compile(model.backbone.forward, backend=backend, dynamic=True)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu() if hasattr(state["torch"], "cpu") else state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_reduce_mean(values: dict[str, float], info: DistInfo, device: torch.device) -> dict[str, float]:
    """Average a dict of floats over all ranks (identity without DDP)."""
    if not info.enabled or not values:
        return values
    keys = sorted(values)
    tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    tensor /= info.world_size
    return dict(zip(keys, tensor.tolist()))


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """All ranks' objects, in rank order (``[obj]`` without DDP)."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


@contextlib.contextmanager
def main_first(info: DistInfo) -> Iterator[None]:
    """Let rank 0 do something (e.g. generate a data cache) before the others read it."""
    if not info.is_main:
        barrier(info)
    yield
    if info.is_main:
        barrier(info)


def peak_memory_mb(device: torch.device) -> float:
    """CUDA max allocated on a GPU, else the process's peak resident set size (MB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
