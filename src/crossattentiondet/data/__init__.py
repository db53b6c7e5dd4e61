"""Data: modalities, readers, splits, checks, statistics, synthetic scenes, transforms, loaders."""
