"""Ablation studies: specs, runner, launchers, aggregation, reports."""
