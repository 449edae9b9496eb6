"""The one formatter of "value [low, high]" cells that every report and card uses."""

from __future__ import annotations

from pneumoscan.evaluation.report import interval_cell


def test_interval_cells_read_the_same_everywhere():
    metrics = {"accuracy": 0.91234, "accuracy_ci": [0.8, 0.95], "ece": 0.031, "auc": float("nan")}
    assert interval_cell(metrics, "accuracy") == "0.9123 [0.8000, 0.9500]"
    assert interval_cell(metrics, "ece") == "0.0310"  # no interval computed: the bare value
    assert interval_cell(metrics, "auc") == "n/a"  # undefined (one class only)
    assert interval_cell(metrics, "sensitivity") == "n/a"  # not reported for this model
