"""Export a trained detector for deployment: ONNX or TorchScript, one raw image in, detections out.

The exported graph takes ONE image, a float32 tensor (1, C, H, W) of *raw* sensor values (0-255 for 8-bit
channels, 0-65535 for 16-bit ones: whatever each modality's ``scale`` says maps to 1.0), channels in the
order of ``data.modalities``. Like the PyTorch model it divides by the scale and normalises with the
per-modality mean/std itself, so a deployment only stacks the sensor frames. float32 rather than uint8 /
uint16: one tensor has one dtype, and an 8-bit RGB frame next to a 16-bit thermal frame needs both ranges.
It returns ``boxes`` (N, 4) x1 y1 x2 y2 in input pixels, ``scores`` (N,) and ``labels`` (N,) int64, 1-based
(``class_names[label - 1]``). ``<file>.json`` next to the file (``model.onnx.json``) records these rules.

Both formats come from ``torch.jit.trace`` (the ONNX one through the TorchScript-based exporter,
``dynamo=False``: the torch.export-based exporter stops at torchvision's data-dependent NMS). Every
data-dependent step of torchvision's Faster R-CNN (top-k, NMS, box filtering) is traced as graph operations
and the image size flows through the graph as a tensor, so with ``dynamic`` one file runs at any size.
Without it, the ONNX input is fixed to the export size (onnxruntime refuses other sizes) and the TorchScript
file checks the size itself. Each export is run and compared with the PyTorch model before it is put in
place (``check``). TorchScript files are traced on the CPU and run there (the trace records the device).
"""

from __future__ import annotations

import contextlib
import functools
import platform
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from crossattentiondet.config import ConfigError
from crossattentiondet.engine.checkpoint import run_dir_of
from crossattentiondet.errors import TrainingError
from crossattentiondet.io import atomic_write, atomic_write_json, ensure_writable_file, read_json

FORMATS = ("onnx", "torchscript")
SUFFIX = {"onnx": ".onnx", "torchscript": ".pt"}
INPUT_NAME = "image"
OUTPUT_NAMES = ("boxes", "scores", "labels")
MIN_OPSET = 14  # the MiT attention (scaled_dot_product_attention) exports from opset 14
DEFAULT_OPSET = 17
DEFAULT_SIZE = (640, 480)  # (width, height) when neither --size nor the run's evaluation size is known
INSTALL_HINT = "pip install 'crossattentiondet[export]'"


class ExportError(TrainingError):
    """The model cannot be exported, or the exported file disagrees with PyTorch; the message says why."""


def _max_opset() -> int:
    try:  # private constant; the TorchScript-based exporter stops below ONNX's newest opset
        from torch.onnx._constants import ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET
    except ImportError:  # pragma: no cover - depends on the torch release
        return 20
    return int(ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET)


def _check_input(image: Tensor, channels: int, height: int, width: int) -> Tensor:
    """``image`` itself, after refusing inputs the exported graph was not made for; ``height``/``width`` of -1
    mean any size. (It returns the image so that a trace records the call: a traced call must have an output.)"""
    if image.dim() != 4 or image.size(0) != 1 or image.size(1) != channels:
        raise ValueError("expected one image of shape (1, " + str(channels) + ", H, W), got "
                         + str(image.shape))
    if height >= 0 and (image.size(2) != height or image.size(3) != width):
        raise ValueError("this model was exported for " + str(width) + "x" + str(height) + " (WxH) images "
                         "only (export with --dynamic for any size), got " + str(image.size(3)) + "x"
                         + str(image.size(2)))
    return image


@functools.cache
def _scripted_input_check() -> Callable[..., Tensor]:
    """:func:`_check_input` compiled by TorchScript, so that a traced graph keeps it as a real check (a
    Python ``if`` would be traced into a constant). Compiled on first use, not at import."""
    with _quiet_tracing():
        return torch.jit.script(_check_input)


class DeployableDetector(nn.Module):
    """The detector as a deployment sees it: image (1, C, H, W) raw float32 -> (boxes, scores, labels).

    ``check_size`` = (channels, height, width) adds the scripted input check (TorchScript only; an ONNX
    runtime checks the declared input shape itself); height = width = -1 for any size.
    """

    def __init__(self, model: nn.Module, check_size: tuple[int, int, int] | None = None) -> None:
        super().__init__()
        self.model = model
        self.check_size = check_size
        self.eval()  # exporters restore the wrapper's mode afterwards, and a new module is in training mode

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if self.check_size is not None:
            image = _scripted_input_check()(image, *self.check_size)
        detections = self.model([image[0]])[0]
        return detections["boxes"], detections["scores"], detections["labels"]


# -------------------------------------------------------------------------------------------- export
def export_model(run_or_checkpoint: str | Path, format: str, *, out: str | Path | None = None,  # noqa: A002
                 dynamic: bool = False, size: tuple[int, int] | None = None, opset: int | None = None,
                 overrides: list[str] | None = None, check: bool = True,
                 echo: Callable[[str], None] = print) -> Path:
    """Export a run's best.pt (or a checkpoint) as ONNX or TorchScript; returns the written file.

    ``size`` = (width, height) of the example image the graph is traced with (default: the run's evaluation
    size, else 640x480); without ``dynamic`` the file accepts only that size. ``out`` defaults to
    ``<run>/export/model.onnx`` (``model.pt`` for TorchScript); ``<file>.json`` next to it (``model.onnx.json``)
    records the input rules. ``overrides`` are dotted config keys applied to the checkpoint's config (e.g.
    ``model.detector.score_thresh=0.3``). With ``check`` the exported file is run at the export size (and at a
    second size when dynamic) and compared with the PyTorch model before it is put in place.
    """
    from crossattentiondet.engine.inference import load_model

    if format not in FORMATS:
        raise ConfigError(f"--format {format!r}: choose one of {', '.join(FORMATS)}")
    if format == "onnx":
        opset = DEFAULT_OPSET if opset is None else opset
        if not MIN_OPSET <= opset <= _max_opset():
            raise ConfigError(f"--opset {opset}: must be between {MIN_OPSET} (the MiT attention needs "
                              f"scaled_dot_product_attention, opset 14) and {_max_opset()}")
        _require_onnx()
    elif opset is not None:
        raise ConfigError("--opset applies to --format onnx only")
    if size is not None and (len(size) != 2 or min(size) < 32):
        raise ConfigError(f"--size {size}: width and height must be at least 32 pixels")

    model, config, checkpoint = load_model(run_or_checkpoint, overrides)
    from crossattentiondet.tasks import detection_only

    detection_only(config.task, "cadet export")
    checkpoint_path = Path(checkpoint["path"])
    if config.model.detector.type != "faster_rcnn":
        raise ConfigError(f"{checkpoint_path}: cadet export supports model.detector.type=faster_rcnn only; this "
                          f"run's {config.model.detector.type} head cannot be exported yet (use cadet predict)")
    run_dir = run_dir_of(checkpoint_path)
    target = ensure_writable_file(Path(out) if out is not None else run_dir / "export" / f"model{SUFFIX[format]}",
                                  "--out")  # before the trace, the long part
    sidecar = target.with_name(target.name + ".json")  # model.onnx.json: model.onnx and model.pt share a folder
    unset = [f"data.modalities.{i}.scale" for i, m in enumerate(config.data.modalities) if m.scale is None]
    if unset:
        raise ConfigError(f"{checkpoint_path}: {', '.join(unset)} unset: the exported graph takes raw float values "
                          f"and needs each modality's scale (e.g. {unset[0]}=255 for 8-bit data)")
    model = model.to("cpu", torch.float32).eval()  # exported from the CPU in float32 (see the .json)
    width, height = size if size is not None else _run_eval_size(run_dir)
    example = example_image(config, height, width, seed=0)
    fixed = "one image per call and this config's settings (thresholds, zeroed modalities)"
    fixed += "; the image size stays free" if dynamic else f", and the size {width}x{height}"

    echo(f"exporting {checkpoint_path} as {format} at {width}x{height}{' (dynamic size)' if dynamic else ''}")
    started = time.perf_counter()
    note = None
    if format == "onnx":
        wrapper = DeployableDetector(model)
        write, method = _onnx_writer(wrapper, example, opset, dynamic), "trace"  # type: ignore[arg-type]
    else:
        channels = model.layout.total_channels
        wrapper = DeployableDetector(model, (channels, -1, -1) if dynamic else (channels, height, width))
        write, note = _torchscript_writer(wrapper, example)
        method = "trace" if note else "script"
        if note:
            fixed = fixed.replace("one image per call", "one image per call, the CPU")
            note = f"{note}; traced instead, which fixes {fixed}"
    checked: dict[str, Any] = {}

    def write_and_check(tmp: Path) -> None:
        write(tmp)
        if check:
            checked.update(check_export(tmp, format, wrapper, config, _check_sizes(width, height, dynamic)))

    try:
        atomic_write(target, write_and_check)  # a failed export or check leaves no file behind
    except (ConfigError, ExportError, OSError):
        raise
    except Exception as err:  # noqa: BLE001 - the exporters raise many types; the user gets one line
        raise ExportError(f"{format} export of {checkpoint_path} failed: {_first_line(err)}") from None
    if note:
        echo(note)
    info = export_info(config, checkpoint, format=format, file=target, dynamic=dynamic, height=height,
                       width=width, opset=opset if format == "onnx" else None, method=method,
                       fixed=fixed if method == "trace" else None, checked=checked)
    atomic_write_json(sidecar, info)
    seconds = time.perf_counter() - started
    if checked:
        worst = max(max(r["max_abs_diff"].values()) for r in checked.values())
        echo(f"checked against PyTorch at {', '.join(checked)}: same detections, max |difference| {worst:.2g}")
    echo(f"{format} model -> {target} ({target.stat().st_size / 2**20:.1f} MiB, {seconds:.0f} s); "
         f"input rules -> {sidecar}")
    return target


def _require_onnx() -> None:
    missing = []
    for name in ("onnx", "onnxruntime"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ConfigError(f"--format onnx needs {' and '.join(missing)}: {INSTALL_HINT}")


def _run_eval_size(run_dir: Path) -> tuple[int, int]:
    """(width, height) the run was evaluated at (final_results.json), else :data:`DEFAULT_SIZE`."""
    try:
        size = read_json(run_dir / "final_results.json")["speed"]["eval_size"]
        width, height = int(size[0]), int(size[1])
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return DEFAULT_SIZE
    return (width, height) if min(width, height) >= 32 else DEFAULT_SIZE


def _check_sizes(width: int, height: int, dynamic: bool) -> list[tuple[int, int]]:
    """The export size, plus (dynamic) a second size that is not a multiple of 32, so padding is exercised."""
    sizes = [(width, height)]
    if dynamic:
        sizes.append((max(32, width * 3 // 4 + 5), max(32, height * 3 // 4 + 3)))
    return sizes


def example_image(config: Any, height: int, width: int, seed: int = 0) -> Tensor:
    """A reproducible random raw image (1, C, H, W) float32, each channel uniform over 0..its scale."""
    generator = torch.Generator().manual_seed(seed)
    scales = [float(m.scale) for m in config.data.modalities for _ in range(m.channels)]
    noise = torch.rand((1, len(scales), height, width), generator=generator)
    return (noise * torch.tensor(scales)[None, :, None, None]).round()


@contextlib.contextmanager
def _quiet_tracing() -> Iterator[None]:
    """Hide the expected tracer and deprecation warnings (each branch they flag is static in eval mode or
    traced by torchvision as graph operations; the exported file is checked against PyTorch instead)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=r".*(is deprecated|legacy TorchScript-based ONNX)")
        warnings.filterwarnings("ignore", message=r"(To copy construct from a tensor|Converting a tensor)")
        warnings.filterwarnings("ignore", message=r"(Exporting aten::index operator|The TorchScript type system|"
                                                  r"The feature will be removed)")
        yield


def _onnx_writer(wrapper: nn.Module, example: Tensor, opset: int, dynamic: bool) -> Callable[[Path], None]:
    axes: dict[str, dict[int, str]] = {name: {0: "detections"} for name in OUTPUT_NAMES}
    if dynamic:
        axes[INPUT_NAME] = {2: "height", 3: "width"}

    def write(path: Path) -> None:
        import onnx

        with _quiet_tracing(), torch.no_grad():
            torch.onnx.export(wrapper, (example,), str(path), dynamo=False, opset_version=opset,
                              input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES), dynamic_axes=axes,
                              do_constant_folding=True)
        onnx.checker.check_model(str(path))

    return write


def _torchscript_writer(wrapper: DeployableDetector, example: Tensor) -> tuple[Callable[[Path], None], str]:
    """torch.jit.script when the model compiles (note ""), else torch.jit.trace and a note naming the part
    that does not compile."""
    with _quiet_tracing():
        try:
            module, failure = torch.jit.script(wrapper), ""
        except Exception as err:  # noqa: BLE001 - TorchScript's compiler raises many types; the culprit is named below
            module, failure = None, _first_line(err)
    if module is not None:  # pragma: no cover - the detector does not compile today
        return (lambda path: module.save(str(path))), ""

    def write(path: Path) -> None:
        with _quiet_tracing(), torch.no_grad():
            traced = torch.jit.trace(wrapper, example, check_trace=False)
        traced.save(str(path))

    return write, f"torch.jit.script cannot compile the model ({unscriptable_part(wrapper.model) or failure})"


_SCRIPT_FAILURES: dict[type, str] = {}  # module class -> why torch.jit.script rejected it, this process


def unscriptable_part(module: nn.Module, name: str = "model") -> str:
    """``dotted.name (Class): reason`` of the first sub-module (children before parents) that
    ``torch.jit.script`` rejects, or ``""`` when all of them compile.

    Failures are remembered per class: TorchScript keeps a half-compiled class after a failure, and a second
    attempt in the same process reports "Can't redefine method" instead of the real reason.
    """
    for child_name, child in module.named_children():
        found = unscriptable_part(child, f"{name}.{child_name}")
        if found:
            return found
    reason = _SCRIPT_FAILURES.get(type(module))
    if reason is None:
        with _quiet_tracing():
            try:
                torch.jit.script(module)
                return ""
            except Exception as err:  # noqa: BLE001
                reason = _first_line(err).split(" (This attribute exists")[0][:200]
        _SCRIPT_FAILURES[type(module)] = reason
    return f"{name} ({type(module).__name__}): {reason}"


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


# --------------------------------------------------------------------------------------------- check
def run_exported(path: str | Path, format: str, image: Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # noqa: A002
    """Run an exported file on one image (1, C, H, W) float32: (boxes, scores, labels) as numpy arrays.

    ONNX files run in onnxruntime (CPU), TorchScript files through ``torch.jit.load``.
    """
    if format == "onnx":
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()  # the CPUs torch was given, not all of them
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        boxes, scores, labels = session.run(list(OUTPUT_NAMES), {INPUT_NAME: image.numpy()})
        return boxes, scores, labels
    with _quiet_tracing():
        module = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        boxes, scores, labels = module(image)
    return boxes.numpy(), scores.numpy(), labels.numpy()


def compare_detections(reference: tuple[Tensor, Tensor, Tensor],
                       exported: tuple[np.ndarray, np.ndarray, np.ndarray]) -> dict[str, Any]:
    """Detections count and largest absolute difference per output; raises if counts or labels differ."""
    ref = [t.detach().cpu().numpy() for t in reference]
    if ref[0].shape != exported[0].shape:
        raise ExportError(f"the exported model finds {exported[0].shape[0]} detections, PyTorch {ref[0].shape[0]} (a "
                          "score within float rounding of the threshold can do this; --no-check keeps the file)")
    if not np.array_equal(ref[2], exported[2]):
        raise ExportError("the exported model's labels differ from PyTorch's")
    diff = {name: float(np.abs(r.astype(np.float64) - e.astype(np.float64)).max()) if r.size else 0.0
            for name, r, e in zip(OUTPUT_NAMES, ref, exported)}
    return {"detections": int(ref[0].shape[0]), "max_abs_diff": diff}


def check_export(path: Path, format: str, wrapper: nn.Module, config: Any,  # noqa: A002
                 sizes: list[tuple[int, int]], box_tol: float = 1e-2, score_tol: float = 1e-4) -> dict[str, Any]:
    """Run ``path`` and the PyTorch ``wrapper`` on random images of each (width, height); raise
    :class:`ExportError` unless they agree (boxes within ``box_tol`` pixels, scores within ``score_tol``)."""
    results: dict[str, Any] = {}
    for i, (width, height) in enumerate(sizes):
        image = example_image(config, height, width, seed=1 + i)
        with torch.no_grad():
            reference = wrapper(image)
        try:
            exported = run_exported(path, format, image)
        except Exception as err:  # noqa: BLE001 - onnxruntime / TorchScript errors have their own types
            raise ExportError(f"the exported {format} model fails at {width}x{height}: {_first_line(err)}") from None
        try:
            result = compare_detections(reference, exported)
        except ExportError as err:
            raise ExportError(f"at {width}x{height}: {err}") from None
        if result["max_abs_diff"]["boxes"] > box_tol or result["max_abs_diff"]["scores"] > score_tol:
            raise ExportError(f"the exported {format} model differs from PyTorch at {width}x{height}: "
                              f"max |difference| {result['max_abs_diff']}")
        results[f"{width}x{height}"] = result
    return results


# ------------------------------------------------------------------------------------- <file>.json
def export_info(config: Any, checkpoint: dict[str, Any], *, format: str, file: Path, dynamic: bool,  # noqa: A002
                height: int, width: int, opset: int | None, method: str, fixed: str | None,
                checked: dict[str, Any]) -> dict[str, Any]:
    """What a deployment needs to know about an exported file (written as <file>.json next to it)."""
    det = config.model.detector
    channels, start = [], 0
    for m in config.data.modalities:
        channels.append({"modality": m.name, "channels": list(range(start, start + m.channels)),
                         "scale": float(m.scale), "mean": list(m.mean), "std": list(m.std)})
        start += m.channels
    used = {name for stream in config.model.streams for name in stream}
    import torchvision

    versions = {"torch": torch.__version__, "torchvision": torchvision.__version__,
                "python": platform.python_version()}
    if format == "onnx":
        import onnx
        import onnxruntime

        versions.update(onnx=onnx.__version__, onnxruntime=onnxruntime.__version__)
    return {
        "format": format,
        "file": file.name,
        "checkpoint": str(checkpoint["path"]),
        "epoch": checkpoint.get("epoch"),
        "input": {
            "name": INPUT_NAME,
            "dtype": "float32",
            "shape": [1, start, "height" if dynamic else height, "width" if dynamic else width],
            "layout": "NCHW, one image",
            "values": "raw sensor values (0..scale per channel), not normalised: the model computes "
                      "(x / scale - mean) / std itself",
            "channel_order": [c["modality"] for c in channels for _ in c["channels"]],
            "modalities": channels,
            "zeroed_modalities": list(config.model.zero_modalities),
            "unused_modalities": [m.name for m in config.data.modalities if m.name not in used],
            "resize": det.resize,
        },
        "outputs": {
            "boxes": "float32 (N, 4): x1, y1, x2, y2 in input pixels",
            "scores": "float32 (N,): descending",
            "labels": "int64 (N,): 1-based, class_names[label - 1]",
        },
        "class_names": list(checkpoint.get("class_names") or []),
        "score_thresh": det.score_thresh,
        "nms_thresh": config.model.detector.roi.nms_thresh,
        "detections_per_img": det.detections_per_img,
        "dynamic": dynamic,
        "export_size": {"width": width, "height": height},
        "opset": opset,
        "method": method,
        "fixed_by_tracing": fixed,
        "runtime": (f"any ONNX runtime with opset {opset} (checked with onnxruntime on the CPU)" if format == "onnx"
                    else "torch + torchvision on the CPU: `import torchvision` before torch.jit.load (the graph "
                         "calls torchvision::nms and torchvision::roi_align)"),
        "checked_against_pytorch": checked,
        "versions": versions,
    }
