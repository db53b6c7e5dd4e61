"""CrossAttentionDet: multi-modal detection and segmentation research toolkit.

The Python API (``cad.load``, ``cad.train``, ``cad.evaluate``) lives in :mod:`crossattentiondet.api`; it is
imported on first use so that ``cadet --help`` does not pay for torch.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["Detections", "Detector", "SegmentationMap", "Segmenter", "evaluate", "load", "train"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from crossattentiondet import api

        return getattr(api, name)
    raise AttributeError(f"module 'crossattentiondet' has no attribute {name!r}")
