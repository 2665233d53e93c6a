"""Streaming regression metrics: :class:`RegressionAccumulator`.

Undefined values (a precision with no predicted positives, an AUC with one
class, ...) are None, never NaN, so results go straight into JSON.
"""

from __future__ import annotations

import numpy as np

from ._common import _Moments

__all__ = ["RegressionAccumulator"]


class RegressionAccumulator:
    """Streaming regression metrics over labelled predictions.

    Notes
    -----
    * mae, rmse: mean absolute error and root mean squared error.
    * mape: mean of |y - y_hat| / |y| as a fraction (0.05 = 5%), over rows
      with y != 0 only (rows with y == 0 are left out, not counted as
      infinite); None when every y is 0.
    * r2: 1 - SSE / SST with SST the sum of squared deviations of y from its
      mean. Means and squared deviations are merged batch by batch with
      Chan's formula, which equals the textbook ``sum y^2 - (sum y)^2 / n``
      but keeps its precision when y is large next to its spread. None with
      fewer than 2 rows or constant y.

    Rows with a non-finite label or prediction are skipped and counted in
    ``missing``.

    Examples
    --------
    >>> acc = RegressionAccumulator().update([1.0, 2.0, 4.0], [1.5, 2.0, 3.0])
    >>> m = acc.metrics()
    >>> m["mae"], round(m["rmse"], 4), m["mape"], round(m["r2"], 4)
    (0.5, 0.6455, 0.25, 0.7321)
    """

    def __init__(self):
        self._reset()

    def _reset(self):
        self._y = _Moments()
        self._abs = _Moments()  # |error|
        self._sq = _Moments()  # error^2
        self._ape = _Moments()  # |error| / |y| where y != 0
        self._missing = 0

    def reset(self):
        """Forget everything seen. Returns self."""
        self._reset()
        return self

    def update(self, y_true, y_pred):
        """Add a batch of labels and predictions (float arrays). Returns self."""
        y = np.asarray(y_true, dtype=float).ravel()
        yhat = np.asarray(y_pred, dtype=float).ravel()
        if y.size != yhat.size:
            raise ValueError(f"y_true has {y.size} rows, y_pred {yhat.size}")
        ok = np.isfinite(y) & np.isfinite(yhat)
        self._missing += int(y.size - ok.sum())
        y, yhat = y[ok], yhat[ok]
        err = np.abs(y - yhat)
        self._y.add(y)
        self._abs.add(err)
        self._sq.add(err * err)
        nz = y != 0
        self._ape.add(err[nz] / np.abs(y[nz]))
        return self

    def merge(self, other):
        """Add another accumulator's rows (moments by Chan's formula; counts exactly). Returns self."""
        if not isinstance(other, RegressionAccumulator):
            raise TypeError(f"cannot merge {type(other).__name__} into RegressionAccumulator")
        for mine, theirs in ((self._y, other._y), (self._abs, other._abs), (self._sq, other._sq),
                             (self._ape, other._ape)):
            mine.merge(theirs)
        self._missing += other._missing
        return self

    @property
    def n(self):
        return self._y.n

    @property
    def missing(self):
        return self._missing

    def metrics(self):
        """``{n, missing, mae, rmse, mape, r2}``; None where undefined."""
        n = self.n
        sse = self._sq.mean * n
        r2 = None if n < 2 or self._y.m2 <= 0 else float(1 - sse / self._y.m2)
        return {
            "n": n,
            "missing": self._missing,
            "mae": self._abs.mean if n else None,
            "rmse": float(np.sqrt(self._sq.mean)) if n else None,
            "mape": self._ape.mean if self._ape.n else None,
            "r2": r2,
        }

    def std_errors(self):
        """Standard errors for :func:`performance_drop_test`.

        mae and mape: sample std of the per-row values / sqrt(n). rmse: delta
        method, SE(MSE) / (2 RMSE) with SE(MSE) the sample std of the squared
        errors / sqrt(n). r2: None.
        """
        rmse = float(np.sqrt(self._sq.mean)) if self.n else None
        se_mse = self._sq.std_err()
        return {
            "mae": self._abs.std_err(),
            "rmse": None if se_mse is None or not rmse else se_mse / (2 * rmse),
            "mape": self._ape.std_err(),
            "r2": None,
        }

    def state_dict(self):
        """JSON-safe state."""
        return {
            "y": self._y.to_list(),
            "abs_error": self._abs.to_list(),
            "squared_error": self._sq.to_list(),
            "abs_pct_error": self._ape.to_list(),
            "missing": self._missing,
        }

    def load_state_dict(self, d):
        """Restore :meth:`state_dict` output. Returns self."""
        moments = [_Moments(*d[k]) for k in ("y", "abs_error", "squared_error", "abs_pct_error")]
        if len({m.n for m in moments[:3]}) != 1 or moments[3].n > moments[0].n:
            raise ValueError("inconsistent counts in regression state")
        self._y, self._abs, self._sq, self._ape = moments
        self._missing = int(d["missing"])
        return self

    def __repr__(self):
        return f"RegressionAccumulator(n={self.n})"
