"""Segmentation: layouts, synthetic scenes, model, metrics, evaluation (task: segment)."""
