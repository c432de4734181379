"""Calibration as shared infrastructure: streaming activation statistics of linear inputs
(stats), collected on stage A (collect_fx) or stage B (collect_onnx), cached by graph
fingerprint (cache), and layer-sequential collection for passes that edit as they go
(sequential)."""

from qpasses.calibration.cache import StatsCache, windows_digest
from qpasses.calibration.collect_fx import collect_fx
from qpasses.calibration.collect_onnx import collect_onnx
from qpasses.calibration.sequential import layer_sequential
from qpasses.calibration.stats import SiteStats, StatsSpec

__all__ = ["SiteStats", "StatsCache", "StatsSpec", "collect_fx", "collect_onnx", "layer_sequential", "windows_digest"]
