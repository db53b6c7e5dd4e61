"""What the fusion modules do on one frame: ``cadet explain``.

A trained model runs once on the frame with the fusion modules recording their internals
(:func:`~crossattentiondet.models.fusion.recording_internals`: the outputs are those of an ordinary
forward). For every encoder stage whose module has gates or weights, one PNG shows the frame's modalities
(ground truth green, detections red), the module's spatial maps over the frame and its per-channel weights:

* ``frm_ffm``: FRM spatial weights and channel weights of each stream (the weights on a stream's features
  where they rectify the other stream);
* ``cssa``: the spatial gate, each stream's ECA channel weights with the switching threshold and the
  channels it hands over to the other stream;
* ``gaff``: the inter-modality gates (channel mean; the gate on the other stream's features entering a
  stream) and each stream's SE channel gate.

``explain.json`` has the numbers per stage (module, statistics of every map, switched fractions, ...), and
``internals.npz`` every recorded array (``stage<k>_<name>``, batch dimension dropped).
"""

from __future__ import annotations

import difflib
import io
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from crossattentiondet.config import ConfigError, ExperimentConfig
from crossattentiondet.engine.checkpoint import run_dir_of
from crossattentiondet.errors import DataError
from crossattentiondet.io import atomic_write, atomic_write_json, ensure_writable_dir
from crossattentiondet.viz import DPI, GT_COLOR, PRED_COLOR, _save
from crossattentiondet.viz import PANEL_CELL_INCHES as CELL_INCHES

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

# what each recorded quantity means, written into explain.json so the numbers can be read without this file
LEGEND = {
    "channel_weights": "FRM: per-channel weight on a stream's features where they rectify the other stream",
    "spatial_weights": "FRM: per-pixel weight on a stream's features where they rectify the other stream",
    "eca_weights": "CSSA: ECA channel weight of a stream (its features are multiplied by it)",
    "switched_fraction": "CSSA: share of a stream's channels replaced by the other stream's (weight below the "
                         "threshold and below the other's)",
    "switched_channels": "CSSA: how many of a stream's channels are replaced (of channels_per_stream)",
    "spatial_gate": "CSSA: spatial attention on the switched pair, sigmoid(mean) * sigmoid(max) over channels",
    "se_gates": "GAFF: a stream's own squeeze-and-excitation channel gate",
    "inter_gates": "GAFF: gate on the other stream's features added to this stream (statistics over channels "
                   "and pixels)",
}


def explain_frame(run: str | Path, frame: str | Path, out: str | Path | None = None, *,
                  data_root: str | Path | None = None, score_thresh: float = 0.3,
                  overrides: list[str] | None = None, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Draw and summarise what each fusion module of a trained dual-stream model does on one frame.

    ``run`` is a run directory or checkpoint; ``frame`` a frame stem of the run's data set (of ``data_root``
    when given) or a ``.npy`` file. Writes ``stage<k>_<module>.png`` per stage with recorded internals,
    ``explain.json`` and ``internals.npz`` into ``out`` (default ``<run>/explain/<frame>``) and returns the
    JSON content (plus ``out_dir``).
    """
    from crossattentiondet.data import Sample, to_model_input
    from crossattentiondet.data.inputs import conform_frame, spec_from_checkpoint
    from crossattentiondet.engine.inference import load_model
    from crossattentiondet.engine.runtime import autocast
    from crossattentiondet.models.encoder import DualStreamEncoder
    from crossattentiondet.models.fusion import recording_internals

    model, config, checkpoint = load_model(run, overrides)
    from crossattentiondet.tasks import detection_only

    detection_only(config.task, "cadet explain")
    ckpt_path = Path(checkpoint["path"])
    encoder = model.backbone.encoder
    if not isinstance(encoder, DualStreamEncoder):
        raise ConfigError(f"{ckpt_path}: the model has one stream (model.streams={config.model.streams}), so no "
                          "fusion modules to explain")
    stem, arrays, boxes, where = read_frame(frame, config, data_root, echo)
    arrays = conform_frame(stem, arrays, spec_from_checkpoint(checkpoint))  # as predict: dtype, scale
    run_dir = run_dir_of(ckpt_path)
    out_dir = ensure_writable_dir(Path(out) if out is not None else run_dir / "explain" / stem,
                                  "--out" if out is not None else "output folder")

    order = [m.name for m in config.data.modalities]
    image = to_model_input(Sample(stem, arrays), order, 0)[0]
    device = next(model.parameters()).device
    with torch.inference_mode(), autocast(device, config.train.precision):
        # the frame as the backbone sees it (resize policy, padding), to place the stage maps over the frame
        batch, _ = model.transform([image.to(device)])
        with recording_internals(encoder):
            detections = model([image.to(device)])[0]
            recorded = [{k: _to_numpy(v) for k, v in getattr(f, "internals", {}).items()} for f in encoder.fusions]
    keep = detections["scores"].float() >= score_thresh
    pred_boxes = detections["boxes"][keep].float().cpu().numpy()

    height, width = int(image.shape[1]), int(image.shape[2])
    resized_h, resized_w = (int(v) for v in batch.image_sizes[0])
    padded_h, padded_w = (int(v) for v in batch.tensors.shape[-2:])
    # the stage maps cover the padded model input; in frame pixels that is this extent
    extent = (0.0, padded_w * width / resized_w, padded_h * height / resized_h, 0.0)
    streams = ["+".join(s) for s in config.model.streams]
    frame_view = _FrameView(image, model.layout, boxes, pred_boxes, (width, height), extent)

    stages: list[dict[str, Any]] = []
    arrays_out: dict[str, np.ndarray] = {}
    for index, (name, fusion, internals) in enumerate(zip(encoder.plan.modules, encoder.fusions, recorded)):
        number = index + 1
        entry: dict[str, Any] = {"stage": number, "module": name, "channels": int(encoder.out_channels[index])}
        if not internals:
            entry.update(image=None, recorded=False, note="no gates or weights to show")
            stages.append(entry)
            continue
        spatial = [v.shape for v in internals.values() if v.ndim == 3 and v.shape[-1] > 1]
        entry.update(recorded=True, map_size=[int(spatial[0][2]), int(spatial[0][1])] if spatial else None,
                     **_stage_numbers(name, fusion, internals, streams))
        figure_path = out_dir / f"stage{number}_{name}.png"
        _save(_stage_figure(name, number, fusion, internals, streams, frame_view), figure_path)
        entry["image"] = figure_path.name
        stages.append(entry)
        for key, value in internals.items():
            arrays_out[f"stage{number}_{key}"] = value
    atomic_write(out_dir / "internals.npz", lambda p: _save_npz(p, arrays_out))
    summary: dict[str, Any] = {
        "checkpoint": str(ckpt_path), "frame": stem, "source": where, "size": [width, height],
        "model_input_size": [resized_w, resized_h], "padded_input_size": [padded_w, padded_h],
        "fusion_plan": encoder.plan.describe(), "streams": streams,
        "score_thresh": score_thresh, "detections": int(keep.sum()), "ground_truth_boxes": int(len(boxes)),
        "stages": stages, "internals": "internals.npz", "legend": LEGEND,
    }
    atomic_write_json(out_dir / "explain.json", summary)
    return {**summary, "out_dir": str(out_dir)}


def read_frame(frame: str | Path, config: ExperimentConfig, data_root: str | Path | None = None,
               echo: Callable[[str], None] = print) -> tuple[str, dict[str, np.ndarray], np.ndarray, str]:
    """(stem, per-modality arrays, ground-truth boxes xyxy, where it came from) of one frame.

    ``frame`` is a ``.npy`` file (read like ``cadet predict`` reads it), or a frame stem looked up in
    ``data_root`` or else the run's own data set (``data.root``; the synthetic set when that is unset).
    """
    from crossattentiondet.engine.inference import input_frames, open_frames_source

    path = Path(frame)
    if path.suffix.lower() == ".npy" or path.is_file():
        ((stem, arrays),) = input_frames([path], config)  # read as predict reads it
        return stem, arrays, np.zeros((0, 4), np.float32), str(path)
    stem = str(frame)
    if data_root is not None:
        root, own = Path(data_root), False
    elif config.data.root is not None:
        root, own = Path(config.data.root), True
    else:
        from crossattentiondet.data.dataset import ensure_synthetic

        root, own = ensure_synthetic(config, echo), True
    source = open_frames_source(root, config, own_data=own)
    if stem not in source.stems:
        close = difflib.get_close_matches(stem, source.stems, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else f", e.g. '{source.stems[0]}'" if source.stems else ""
        count = f"{len(source.stems)} frame{'' if len(source.stems) == 1 else 's'}"
        raise DataError(f"frame '{stem}' is not in the data set {root} ({count}{hint})")
    sample = source.read(stem)
    return stem, sample.modalities, np.asarray(sample.boxes, np.float32).reshape(-1, 4), str(root)


# ------------------------------------------------------------------------------------------ numbers
def _stats(values: np.ndarray) -> dict[str, float]:
    v = values.astype(np.float64)
    return {"mean": round(float(v.mean()), 6), "std": round(float(v.std()), 6), "min": round(float(v.min()), 6),
            "max": round(float(v.max()), 6)}


def _per_stream(first: np.ndarray, second: np.ndarray, streams: list[str], fn: Callable[[np.ndarray], Any]
                ) -> dict[str, Any]:
    return {streams[0]: fn(first), streams[1]: fn(second)}


def _stage_numbers(name: str, fusion: torch.nn.Module, rec: Mapping[str, np.ndarray], streams: list[str]
                   ) -> dict[str, Any]:
    """The JSON numbers of one stage from its recorded internals."""
    if name == "frm_ffm":
        return {"channel_weights": _per_stream(rec["channel_weights_1"], rec["channel_weights_2"], streams, _stats),
                "spatial_weights": _per_stream(rec["spatial_weights_1"], rec["spatial_weights_2"], streams, _stats)}
    if name == "cssa":
        channels = rec["switch_1"].size
        return {"switching_thresh": float(fusion.switching_thresh),
                "eca_weights": _per_stream(rec["eca_weights_1"], rec["eca_weights_2"], streams, _stats),
                "switched_fraction": _per_stream(rec["switch_1"], rec["switch_2"], streams,
                                                 lambda m: round(float(m.mean()), 6)),
                "switched_channels": _per_stream(rec["switch_1"], rec["switch_2"], streams, lambda m: int(m.sum())),
                "spatial_gate": _stats(rec["spatial_gate"]), "channels_per_stream": int(channels)}
    if name == "gaff":
        return {"se_gates": _per_stream(rec["se_gate_1"], rec["se_gate_2"], streams, _stats),
                "inter_gates": _per_stream(rec["inter_gate_1"], rec["inter_gate_2"], streams, _stats)}
    # a module registered later that records something: its arrays, summarised generically
    return {"internals": {key: _stats(value.astype(np.float32)) for key, value in rec.items()}}


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    t = t.detach().cpu()
    t = t if t.dtype == torch.bool else t.float()
    return t[0].numpy()  # one frame: drop the batch dimension


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    buffer = io.BytesIO()  # np.savez appends ".npz" to a file name; writing to a file object keeps ours
    np.savez_compressed(buffer, **arrays)
    path.write_bytes(buffer.getvalue())


# ------------------------------------------------------------------------------------------ figures
class _FrameView:
    """The frame's modalities and boxes, and where the stage maps lie over it."""

    def __init__(self, image: torch.Tensor, layout: Any, boxes: np.ndarray, predictions: np.ndarray,
                 size: tuple[int, int], extent: tuple[float, float, float, float]) -> None:
        self.image, self.layout, self.boxes, self.predictions = image, layout, boxes, predictions
        self.size, self.extent = size, extent

    def draw_modalities(self, fig: Figure, grid: Any, columns: int) -> None:
        from crossattentiondet.viz import modality_image

        for col, (name, channels) in enumerate(zip(self.layout.modality_names, self.layout.modality_channels)):
            if col >= columns:
                break
            ax = fig.add_subplot(grid[0, col])
            shown = modality_image(self.image, channels)
            ax.imshow(shown, cmap=None if shown.ndim == 3 else "gray", vmin=0.0, vmax=1.0, interpolation="nearest",
                      extent=(0, self.size[0], self.size[1], 0))  # pixel i spans [i, i + 1), as box coordinates do
            for boxes, color in ((self.boxes, GT_COLOR), (self.predictions, PRED_COLOR)):
                _draw_boxes(ax, boxes, color)
            self._frame_limits(ax)
            _plain(ax, name)

    def draw_map(self, fig: Figure, cell: Any, values: np.ndarray, title: str) -> None:
        ax = fig.add_subplot(cell)
        image = ax.imshow(values, cmap="viridis", extent=self.extent, interpolation="nearest")
        _draw_boxes(ax, self.boxes, GT_COLOR)
        self._frame_limits(ax)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.02).ax.tick_params(labelsize=7)
        _plain(ax, title)


    def _frame_limits(self, ax: Axes) -> None:
        # the frame itself: boxes past it and the maps' padding are cut off
        ax.set_xlim(0, self.size[0])
        ax.set_ylim(self.size[1], 0)


def _plain(ax: Axes, title: str) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=8)


def _draw_boxes(ax: Axes, boxes: np.ndarray, color: str) -> None:
    from matplotlib.collections import PolyCollection

    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    if len(b):  # one collection, not a patch per box: a weak model's hundreds of boxes draw in no time
        corners = np.stack([b[:, [0, 1]], b[:, [2, 1]], b[:, [2, 3]], b[:, [0, 3]]], axis=1)
        ax.add_collection(PolyCollection(corners, facecolors="none", edgecolors=color, linewidths=1.0))


def _stage_figure(name: str, number: int, fusion: torch.nn.Module, rec: Mapping[str, np.ndarray],
                  streams: list[str], view: _FrameView) -> Figure:
    """Modalities (top), the module's spatial maps over the frame (middle), its channel weights (bottom)."""
    from matplotlib.figure import Figure

    s1, s2 = streams
    channels: list[tuple[str, np.ndarray]] = []
    maps: list[tuple[str, np.ndarray]] = []
    if name == "frm_ffm":
        maps = [(f"FRM spatial weights\n{s1} -> {s2}", rec["spatial_weights_1"][0]),
                (f"FRM spatial weights\n{s2} -> {s1}", rec["spatial_weights_2"][0])]
        channels = [(f"{s1} (rectifies {s2})", rec["channel_weights_1"].reshape(-1)),
                    (f"{s2} (rectifies {s1})", rec["channel_weights_2"].reshape(-1))]
        channel_title = "FRM channel weights"
    elif name == "cssa":
        maps = [("CSSA spatial gate", rec["spatial_gate"][0])]
        channels = [(f"{s1} ECA", rec["eca_weights_1"].reshape(-1)), (f"{s2} ECA", rec["eca_weights_2"].reshape(-1))]
        channel_title = (f"CSSA ECA weights; x: channel handed over (threshold {fusion.switching_thresh:g}); "
                         f"{s1} {int(rec['switch_1'].sum())}, {s2} {int(rec['switch_2'].sum())} of "
                         f"{rec['switch_1'].size}")
    elif name == "gaff":
        maps = [(f"GAFF gate, channel mean\n{s2} -> {s1}", rec["inter_gate_1"].mean(axis=0)),
                (f"GAFF gate, channel mean\n{s1} -> {s2}", rec["inter_gate_2"].mean(axis=0))]
        channels = [(f"{s1} SE", rec["se_gate_1"].reshape(-1)), (f"{s2} SE", rec["se_gate_2"].reshape(-1))]
        channel_title = "GAFF SE channel gates"
    else:  # a module registered later: its 2-D and 3-D arrays as maps (channel mean)
        maps = [(key, v if v.ndim == 2 else v.mean(axis=0)) for key, v in rec.items()
                if v.ndim in (2, 3) and v.shape[-1] > 1]
        channel_title = ""
    columns = max(len(view.layout.modality_names), len(maps), 1)
    width, height = view.size
    cell_h = CELL_INCHES * height / width
    rows = 3 if channels else 2
    ratios = [cell_h, cell_h, 1.8][:rows]
    fig_h = sum(ratios) + 0.4 * rows + 0.4  # room for the titles above each row and the suptitle
    fig = Figure(figsize=(CELL_INCHES * columns, fig_h), dpi=DPI)
    # fixed margins rather than a layout engine: constrained layout doubles the time to draw the figure
    grid = fig.add_gridspec(rows, columns, height_ratios=ratios, left=0.07, right=0.95, top=1 - 0.45 / fig_h,
                            bottom=0.45 / fig_h if channels else 0.05 / fig_h, hspace=0.3, wspace=0.3)
    fig.suptitle(f"stage {number}: {name}", fontsize=10)
    view.draw_modalities(fig, grid, columns)
    for col, (title, values) in enumerate(maps[:columns]):
        view.draw_map(fig, grid[1, col], values, title)
    if channels:
        ax = fig.add_subplot(grid[2, :])
        index = np.arange(len(channels[0][1]))
        for label, values in channels:
            ax.plot(index, values, marker=".", markersize=3, linewidth=0.8, label=label)
        if name == "cssa":
            ax.axhline(fusion.switching_thresh, color="grey", linestyle="--", linewidth=0.8)
            for key, (_label, values) in zip(("switch_1", "switch_2"), channels):
                hit = rec[key].reshape(-1)
                ax.plot(index[hit], values[hit], "x", color="black", markersize=5)
        ax.set_xlabel("channel", fontsize=8)
        ax.set_title(channel_title, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7, loc="best")
    return fig


