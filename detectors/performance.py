"""Model performance: streaming metrics, a drop test and label-free estimates.

One name for the four modules that hold them, split by concern:

* :mod:`detectors.classification` and :mod:`detectors.regression`: :class:`ClassificationAccumulator`
  and :class:`RegressionAccumulator` keep fixed-size sums over labelled predictions and turn them
  into metrics.
* :mod:`detectors.drop`: :func:`performance_drop_test` asks whether a window's metric is worse than
  the baseline's by more than a margin, with a one-sided test.
* :mod:`detectors.estimation`: :class:`ConfidenceBasedEstimator` (CBPE) estimates classification
  metrics before labels arrive, from calibrated scores.

Undefined values (a precision with no predicted positives, an AUC with one
class, ...) are None, never NaN, so results go straight into JSON.
"""

from __future__ import annotations

from ._common import LOG_LOSS_EPS, MAX_CLASSES, OVERFLOW
from .classification import ClassificationAccumulator
from .drop import HIGHER_IS_BETTER, PROPORTIONS, performance_drop_test
from .estimation import ConfidenceBasedEstimator, calibration_test, pool_adjacent_violators
from .regression import RegressionAccumulator

__all__ = [
    "HIGHER_IS_BETTER",
    "LOG_LOSS_EPS",
    "MAX_CLASSES",
    "OVERFLOW",
    "PROPORTIONS",
    "ClassificationAccumulator",
    "ConfidenceBasedEstimator",
    "RegressionAccumulator",
    "calibration_test",
    "performance_drop_test",
    "pool_adjacent_violators",
]
