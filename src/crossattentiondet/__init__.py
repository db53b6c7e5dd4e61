"""CrossAttentionDet: multi-modal object detection research toolkit."""

__version__ = "0.1.0"
