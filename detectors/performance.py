"""Model performance: streaming metrics, a drop test and label-free estimates.

* :class:`ClassificationAccumulator` and :class:`RegressionAccumulator` keep
  fixed-size sums over labelled predictions and turn them into metrics.
* :func:`performance_drop_test` asks whether a window's metric is worse than
  the baseline's by more than a margin, with a one-sided test.
* :class:`ConfidenceBasedEstimator` (CBPE) estimates classification metrics
  before labels arrive, from calibrated scores.

Undefined values (a precision with no predicted positives, an AUC with one
class, ...) are None, never NaN, so results go straight into JSON.
"""

from __future__ import annotations

import numbers

import numpy as np
from scipy.special import bdtr, chdtrc, ndtr

__all__ = [
    "ClassificationAccumulator",
    "ConfidenceBasedEstimator",
    "RegressionAccumulator",
    "calibration_test",
    "performance_drop_test",
    "pool_adjacent_violators",
]

MAX_CLASSES = 100
OVERFLOW = "__overflow__"
LOG_LOSS_EPS = 1e-15


# ---------------------------------------------------------------- helpers


def _labels(values):
    """Labels as a str array plus a mask of missing ones (None, float NaN)."""
    if isinstance(values, np.ndarray) and values.dtype.kind in "USiub":
        x = values.ravel()
        return x.astype(str), np.zeros(x.size, dtype=bool)
    if isinstance(values, np.ndarray) and values.dtype.kind == "f":
        x = values.ravel()
        return x.astype(str), np.isnan(x)
    values = values.ravel().tolist() if isinstance(values, np.ndarray) else list(values)
    missing = np.fromiter((v is None or v != v for v in values), dtype=bool, count=len(values))
    return np.array([str(v) for v in values], dtype=str).reshape(len(values)), missing


def _div(a, b):
    return None if b == 0 else float(a / b)


def _positive_int(name, value, low=1):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def _scores(score, size):
    s = np.asarray(score, dtype=float).ravel()
    if s.size != size:
        raise ValueError(f"score has {s.size} values for {size} rows")
    finite = np.isfinite(s)
    if ((s[finite] < 0) | (s[finite] > 1)).any():
        raise ValueError("scores must be probabilities in [0, 1] (NaN = no score)")
    return s, finite


def _bin(s, bins):
    """Equal-width bin of each score in [0, 1]: floor(s * bins), 1.0 in the last bin."""
    return np.minimum((s * bins).astype(np.int64), bins - 1)


class _Moments:
    """Count, mean and sum of squared deviations, merged batch by batch (Chan et al.).

    Raw power sums lose all precision when the mean is large next to the
    spread; this form does not.
    """

    __slots__ = ("n", "mean", "m2")

    def __init__(self, n=0, mean=0.0, m2=0.0):
        self.n, self.mean, self.m2 = int(n), float(mean), float(m2)

    def add(self, x):
        if x.size == 0:
            return
        n_b, mean_b = x.size, float(x.mean())
        dev = x - mean_b
        n = self.n + n_b
        delta = mean_b - self.mean
        self.m2 += float(dev @ dev) + delta * delta * self.n * n_b / n
        self.mean += delta * n_b / n
        self.n = n

    def sample_var(self):
        return max(self.m2, 0.0) / (self.n - 1) if self.n > 1 else None

    def std_err(self):
        """Standard error of the mean, None with fewer than 2 values."""
        v = self.sample_var()
        return None if v is None else float(np.sqrt(v / self.n))

    def to_list(self):
        return [self.n, self.mean, self.m2]


def _f1(tp, fp, fn):
    """2TP / (2TP + FP + FN): the harmonic mean of precision and recall, defined whenever the denominator is."""
    return _div(2 * tp, 2 * tp + fp + fn)


# ---------------------------------------------------------------- classification


class ClassificationAccumulator:
    """Streaming classification metrics over labelled predictions.

    Parameters
    ----------
    classes : sequence or None
        Class labels known in advance (their order fixes the rows of
        :attr:`confusion_matrix`); others are added as they appear.
    positive : label or None
        The positive class. When given the metrics are binary:
        precision, recall and F1 of ``positive`` against all other labels,
        and scores (``update(..., score=...)``) are read as
        P(y = ``positive``). When None they are macro averages over classes
        and scores are not accepted.
    n_bins_calibration : int
        Equal-width bins over [0, 1] for the expected calibration error.
    score_bins : int
        Equal-width bins over [0, 1] of the score histograms behind ROC AUC.

    Notes
    -----
    Labels are compared as ``str(value)`` (so ``1`` and ``"1"`` are the same
    class but ``1`` and ``1.0`` are not); rows whose label or prediction is
    None or NaN are skipped and counted in ``missing``.

    Memory is bounded: a confusion matrix over at most 100 classes (labels
    met after that share one ``"__overflow__"`` row and column, left out of
    the macro averages; accuracy is counted by exact label match and stays
    exact), two histograms of ``score_bins`` counts and a few sums.

    * accuracy: share of rows with prediction == label (also in binary mode
      with more than two labels).
    * precision, recall: None when no row is predicted / labelled
      positive. F1 = 2TP / (2TP + FP + FN), None only when that is 0/0.
      Macro averages are means over the classes where the per-class value
      is defined (scikit-learn would count undefined ones as 0 and warn).
    * roc_auc: the Mann-Whitney probability P(score+ > score-) +
      P(score+ = score-) / 2 from the binned scores, where pairs in the same
      bin count half. Pairs in different bins are ordered exactly, so the
      exact AUC lies within ``roc_auc_error_bound`` = 0.5 * sum_b
      pos_b * neg_b / (P * N) of the reported value: about
      0.5 / ``score_bins`` when both classes spread evenly over [0, 1],
      more when scores crowd into a few bins (at most 0.5).
    * log_loss: mean of -[y ln p + (1 - y) ln(1 - p)], p clipped to
      [1e-15, 1 - 1e-15].
    * ece: sum over calibration bins of (n_b / n) |mean score_b - positive
      rate_b|, on P(positive) (the binary form, not top-label confidence).

    Score metrics need ``positive`` and use only rows with a finite score
    (``n_scored``). Scores outside [0, 1] raise ValueError: they mean the
    score field is not a probability.

    Examples
    --------
    >>> acc = ClassificationAccumulator(positive=1)
    >>> acc = acc.update([1, 1, 0, 0, 1], [1, 0, 0, 1, 1], score=[0.9, 0.4, 0.2, 0.6, 0.8])
    >>> m = acc.metrics()
    >>> m["accuracy"], round(m["precision"], 4), round(m["recall"], 4), m["roc_auc"]
    (0.6, 0.6667, 0.6667, 0.8333333333333334)
    """

    def __init__(self, classes=None, positive=None, n_bins_calibration=10, score_bins=1000):
        self.classes = None if classes is None else [str(c) for c in classes]
        self.positive = None if positive is None else str(positive)
        self.n_bins_calibration = _positive_int("n_bins_calibration", n_bins_calibration)
        self.score_bins = _positive_int("score_bins", score_bins)
        if self.classes is not None:
            if len(set(self.classes)) != len(self.classes):
                raise ValueError("classes must be unique (compared as str)")
            if len(self.classes) > MAX_CLASSES:
                raise ValueError(f"at most {MAX_CLASSES} classes, got {len(self.classes)}")
            if self.positive is not None and self.positive not in self.classes:
                raise ValueError(f"positive={self.positive!r} is not one of classes")
        self._reset()

    def _reset(self):
        self._names = []
        self._index = {}
        self._cm = np.zeros((0, 0), dtype=np.int64)
        for name in (self.classes or []) + ([self.positive] if self.positive is not None else []):
            self._class_index(name)
        self._correct = 0
        self._missing = 0
        self._pos_hist = np.zeros(self.score_bins, dtype=np.int64)
        self._neg_hist = np.zeros(self.score_bins, dtype=np.int64)
        self._log_loss = _Moments()
        self._cal_n = np.zeros(self.n_bins_calibration, dtype=np.int64)
        self._cal_score = np.zeros(self.n_bins_calibration)
        self._cal_pos = np.zeros(self.n_bins_calibration, dtype=np.int64)

    def reset(self):
        """Forget everything seen; keep the configuration. Returns self."""
        self._reset()
        return self

    def _class_index(self, name):
        i = self._index.get(name)
        if i is not None:
            return i
        if len(self._names) >= MAX_CLASSES and name != OVERFLOW:
            return self._class_index(OVERFLOW)
        i = len(self._names)
        self._names.append(name)
        self._index[name] = i
        cm = np.zeros((i + 1, i + 1), dtype=np.int64)
        cm[:i, :i] = self._cm
        self._cm = cm
        return i

    def update(self, y_true, y_pred, score=None):
        """Add a batch of labelled predictions. Returns self.

        Parameters
        ----------
        y_true, y_pred : array_like
            Labels and predicted labels, row for row.
        score : array_like or None
            P(y = ``positive``) per row (binary mode only); NaN = no score.
        """
        t, t_missing = _labels(y_true)
        p, p_missing = _labels(y_pred)
        if t.size != p.size:
            raise ValueError(f"y_true has {t.size} rows, y_pred {p.size}")
        if score is not None:
            if self.positive is None:
                raise ValueError("scores need positive= (the class they are the probability of)")
            s, s_ok = _scores(score, t.size)
        keep = ~(t_missing | p_missing)
        self._missing += int(t.size - keep.sum())
        t, p = t[keep], p[keep]
        if t.size == 0:
            return self
        self._correct += int(np.count_nonzero(t == p))
        names, first, inverse = np.unique(np.concatenate([t, p]), return_index=True, return_inverse=True)
        index = np.zeros(names.size, dtype=np.int64)
        for j in np.argsort(first, kind="stable"):  # register new classes in order of first appearance
            index[j] = self._class_index(str(names[j]))
        k = len(self._names)
        flat = index[inverse[: t.size]] * k + index[inverse[t.size :]]
        self._cm += np.bincount(flat, minlength=k * k).reshape(k, k)
        if score is not None:
            s, s_ok = s[keep], s_ok[keep]
            self._add_scores(s[s_ok], t[s_ok] == self.positive)
        return self

    def _add_scores(self, s, y):
        if s.size == 0:
            return
        b = _bin(s, self.score_bins)
        self._pos_hist += np.bincount(b[y], minlength=self.score_bins)
        self._neg_hist += np.bincount(b[~y], minlength=self.score_bins)
        p = np.clip(s, LOG_LOSS_EPS, 1 - LOG_LOSS_EPS)
        self._log_loss.add(-np.where(y, np.log(p), np.log1p(-p)))
        c = _bin(s, self.n_bins_calibration)
        self._cal_n += np.bincount(c, minlength=self.n_bins_calibration)
        self._cal_score += np.bincount(c, weights=s, minlength=self.n_bins_calibration)
        self._cal_pos += np.bincount(c[y], minlength=self.n_bins_calibration)

    # ---- read-only views

    @property
    def n(self):
        """Rows with both a label and a prediction."""
        return int(self._cm.sum())

    @property
    def missing(self):
        """Rows skipped for a missing label or prediction."""
        return self._missing

    @property
    def n_scored(self):
        """Counted rows that had a finite score."""
        return self._log_loss.n

    @property
    def labels(self):
        """Class names in the order of :attr:`confusion_matrix` rows (a copy)."""
        return list(self._names)

    @property
    def confusion_matrix(self):
        """Counts, rows = true class, columns = predicted class (a copy)."""
        return self._cm.copy()

    def _binary_counts(self):
        i = self._index[self.positive]
        tp = int(self._cm[i, i])
        return tp, int(self._cm[:, i].sum()) - tp, int(self._cm[i, :].sum()) - tp

    def _macro(self):
        named = [i for i, name in enumerate(self._names) if name != OVERFLOW]
        prec, rec, f1 = [], [], []
        for i in named:
            tp = int(self._cm[i, i])
            fp = int(self._cm[:, i].sum()) - tp
            fn = int(self._cm[i, :].sum()) - tp
            for out, value in ((prec, _div(tp, tp + fp)), (rec, _div(tp, tp + fn)), (f1, _f1(tp, fp, fn))):
                if value is not None:
                    out.append(value)
        mean = lambda v: float(np.mean(v)) if v else None  # noqa: E731
        return mean(prec), mean(rec), mean(f1)

    def _auc(self):
        pos, neg = self._pos_hist, self._neg_hist
        n_pos, n_neg = int(pos.sum()), int(neg.sum())
        if n_pos == 0 or n_neg == 0:
            return None, None, n_pos, n_neg
        below = np.cumsum(neg) - neg
        pairs = n_pos * n_neg
        auc = float((pos * (below + 0.5 * neg)).sum() / pairs)
        bound = float(0.5 * (pos * neg).sum() / pairs)
        return auc, bound, n_pos, n_neg

    def metrics(self):
        """Current metrics as a JSON-safe dict.

        Keys: ``n``, ``missing``, ``average`` ("binary" or "macro"),
        ``accuracy``, ``precision``, ``recall``, ``f1``, ``n_scored``,
        ``roc_auc``, ``roc_auc_error_bound``, ``log_loss``, ``ece``. Score
        metrics are None without ``positive`` or without scored rows.
        """
        n = self.n
        if self.positive is not None:
            tp, fp, fn = self._binary_counts()
            precision, recall, f1 = _div(tp, tp + fp), _div(tp, tp + fn), _f1(tp, fp, fn)
        else:
            precision, recall, f1 = self._macro()
        auc, bound, _, _ = self._auc()
        n_scored = self.n_scored
        ece = None
        if n_scored:
            used = self._cal_n > 0
            gap = np.abs(self._cal_score[used] / self._cal_n[used] - self._cal_pos[used] / self._cal_n[used])
            ece = float((self._cal_n[used] * gap).sum() / n_scored)
        return {
            "n": n,
            "missing": self._missing,
            "average": "binary" if self.positive is not None else "macro",
            "accuracy": _div(self._correct, n),
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "n_scored": n_scored,
            "roc_auc": auc,
            "roc_auc_error_bound": bound,
            "log_loss": self._log_loss.mean if n_scored else None,
            "ece": ece,
        }

    def std_errors(self):
        """Standard errors of the metrics, for :func:`performance_drop_test`.

        * accuracy, precision, recall: binomial, sqrt(p (1 - p) / m) with m the
          metric's denominator (rows; predicted positives; actual positives).
          Binary mode only for precision and recall.
        * f1 (binary): delta method for 2TP / (2TP + FP + FN) under a
          multinomial model of the confusion cells,
          sqrt(4 TP (FP + FN) (TP + FP + FN) / (2TP + FP + FN)^4).
        * roc_auc: Hanley and McNeil (1982) with Q1 = A / (2 - A) and
          Q2 = 2A^2 / (1 + A).
        * log_loss: sample std of the per-row losses / sqrt(n_scored).
        * ece: None (no simple closed form).

        Values are None where the metric is undefined or the form does not
        apply (macro averages).
        """
        m = self.metrics()
        out = {"accuracy": None, "precision": None, "recall": None, "f1": None, "roc_auc": None, "log_loss": None, "ece": None}

        def binom(p, k):
            return None if p is None or k == 0 else float(np.sqrt(p * (1 - p) / k))

        out["accuracy"] = binom(m["accuracy"], m["n"])
        if self.positive is not None:
            tp, fp, fn = self._binary_counts()
            out["precision"] = binom(m["precision"], tp + fp)
            out["recall"] = binom(m["recall"], tp + fn)
            d = 2 * tp + fp + fn
            if d:
                out["f1"] = float(np.sqrt(4.0 * tp * (fp + fn) * (tp + fp + fn) / float(d) ** 4))
        auc, _, n_pos, n_neg = self._auc()
        if auc is not None:
            q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
            var = (auc * (1 - auc) + (n_pos - 1) * (q1 - auc * auc) + (n_neg - 1) * (q2 - auc * auc)) / (n_pos * n_neg)
            out["roc_auc"] = float(np.sqrt(max(var, 0.0)))
        out["log_loss"] = self._log_loss.std_err()
        return out

    def state_dict(self):
        """JSON-safe state; includes the configuration so a load can check it."""
        return {
            "classes": self.classes,
            "positive": self.positive,
            "n_bins_calibration": self.n_bins_calibration,
            "score_bins": self.score_bins,
            "labels": list(self._names),
            "confusion_matrix": self._cm.tolist(),
            "correct": self._correct,
            "missing": self._missing,
            "pos_hist": self._pos_hist.tolist(),
            "neg_hist": self._neg_hist.tolist(),
            "log_loss": self._log_loss.to_list(),
            "cal_n": self._cal_n.tolist(),
            "cal_score": self._cal_score.tolist(),
            "cal_pos": self._cal_pos.tolist(),
        }

    def load_state_dict(self, d):
        """Restore :meth:`state_dict` output. Returns self.

        Raises ValueError if the state was saved with another configuration.
        """
        config = (self.classes, self.positive, self.n_bins_calibration, self.score_bins)
        saved = (d["classes"], d["positive"], int(d["n_bins_calibration"]), int(d["score_bins"]))
        if saved != config:
            raise ValueError("state was saved for different classes, positive or bins")
        names = [str(x) for x in d["labels"]]
        cm = np.array(d["confusion_matrix"], dtype=np.int64).reshape(len(names), len(names))
        if len(set(names)) != len(names) or len(names) > MAX_CLASSES + 1 or (cm < 0).any():
            raise ValueError("labels must be unique, at most 101, with non-negative counts")
        hists = [np.array(d[k], dtype=np.int64) for k in ("pos_hist", "neg_hist")]
        cal = [np.array(d[k], dtype=t) for k, t in (("cal_n", np.int64), ("cal_score", float), ("cal_pos", np.int64))]
        if any(h.shape != (self.score_bins,) for h in hists) or any(c.shape != (self.n_bins_calibration,) for c in cal):
            raise ValueError("histogram lengths do not match the configuration")
        self._names = names
        self._index = {name: i for i, name in enumerate(names)}
        self._cm = cm
        self._correct = int(d["correct"])
        self._missing = int(d["missing"])
        self._pos_hist, self._neg_hist = hists
        self._log_loss = _Moments(*d["log_loss"])
        self._cal_n, self._cal_score, self._cal_pos = cal
        return self

    def __repr__(self):
        return f"ClassificationAccumulator(positive={self.positive!r}, classes={len(self._names)}, n={self.n})"


# ---------------------------------------------------------------- regression


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


# ---------------------------------------------------------------- drop test

PROPORTIONS = frozenset({"accuracy", "precision", "recall"})
HIGHER_IS_BETTER = {
    "accuracy": True, "precision": True, "recall": True, "f1": True, "roc_auc": True, "r2": True,
    "log_loss": False, "ece": False, "mae": False, "rmse": False, "mape": False,
}  # fmt: skip


def performance_drop_test(
    metric, baseline_value, window_value, n, margin=0.0, *, std_err=None, alpha=0.05, higher_is_better=None
):
    """One-sided test that a window's metric is worse than baseline by more than ``margin``.

    For a metric where higher is better the hypotheses are
    H0: true window value >= baseline - margin, H1: it is below; for error
    metrics (log_loss, ece, mae, rmse, mape) they are mirrored around
    baseline + margin. ``drop`` is ``p_value <= alpha``. The baseline is taken
    as a known constant (it comes from a large labelled set); with a small
    baseline set, widen ``margin``.

    * accuracy, precision, recall (proportions; binary precision/recall
      only): exact one-sided binomial test (the lower tail P(X <= k), as
      ``scipy.stats.binomtest(..., alternative="less")``, computed with
      ``scipy.special.bdtr`` so the daemon need not import scipy.stats) of k = round(value * n) successes out of
      ``n``, against p0 = baseline - margin. ``n`` must be the metric's
      denominator: rows for accuracy, predicted positives for precision,
      actual positives for recall. ``test = "binomial_exact"``.
    * any other metric: normal approximation, z = (value - threshold) /
      ``std_err`` (sign mirrored for error metrics), p = Phi(z). The standard
      error is the caller's; :meth:`ClassificationAccumulator.std_errors` and
      :meth:`RegressionAccumulator.std_errors` give documented ones (delta
      method for F1 and RMSE, Hanley-McNeil for ROC AUC, sample std / sqrt(n)
      for means). ``test = "normal"``.

    Parameters
    ----------
    metric : str
        Metric name; unknown names need ``higher_is_better``.
    baseline_value, window_value : float or None
        None (an undefined window metric) gives ``p_value=None``, ``drop=False``.
    n : int
        Rows behind the window value (see above); 0 gives ``p_value=None``.
    margin : float
        Tolerated worsening, >= 0, in the metric's units.
    std_err : float or None
        Needed for non-proportion metrics.
    alpha : float
        Significance level in (0, 1).
    higher_is_better : bool or None
        Overrides the built-in direction of ``metric``.

    Returns
    -------
    dict
        ``{metric, baseline, value, margin, threshold, n, p_value, alpha,
        drop, test}``; ``threshold`` is baseline -/+ margin.

    Examples
    --------
    >>> r = performance_drop_test("accuracy", 0.90, 0.85, n=1000, margin=0.02)
    >>> r["test"], round(r["p_value"], 5), r["drop"]
    ('binomial_exact', 0.00263, True)
    >>> r = performance_drop_test("roc_auc", 0.80, 0.78, n=2000, margin=0.0, std_err=0.01)
    >>> r["test"], round(r["p_value"], 4), r["drop"]
    ('normal', 0.0228, True)
    """
    if higher_is_better is None:
        if metric not in HIGHER_IS_BETTER:
            raise ValueError(f"unknown metric {metric!r}: pass higher_is_better")
        higher_is_better = HIGHER_IS_BETTER[metric]
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    if not (isinstance(margin, numbers.Real) and 0 <= margin < float("inf")):
        raise ValueError(f"margin must be a finite number >= 0, got {margin!r}")
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0:
        raise ValueError(f"n must be an integer >= 0, got {n!r}")
    if baseline_value is None:
        raise ValueError("baseline_value is required")
    proportion = metric in PROPORTIONS
    threshold = baseline_value - margin if higher_is_better else baseline_value + margin
    out = {
        "metric": metric,
        "baseline": float(baseline_value),
        "value": None if window_value is None else float(window_value),
        "margin": float(margin),
        "threshold": float(threshold),
        "n": int(n),
        "p_value": None,
        "alpha": float(alpha),
        "drop": False,
        "test": "binomial_exact" if proportion else "normal",
    }
    if window_value is None or n == 0:
        return out
    if proportion:
        if not 0 <= window_value <= 1 or not 0 <= baseline_value <= 1:
            raise ValueError(f"{metric} values must be in [0, 1]")
        k = int(round(window_value * n))
        # p0 <= 0: the metric cannot fall below the threshold, nothing to detect.
        p_value = 1.0 if threshold <= 0 else float(min(1.0, bdtr(k, int(n), min(threshold, 1.0))))
    else:
        if std_err is None or not std_err > 0:
            raise ValueError(f"{metric} needs a positive std_err for the normal test, got {std_err!r}")
        z = (window_value - threshold) / std_err if higher_is_better else (threshold - window_value) / std_err
        p_value = float(ndtr(z))
    out["p_value"] = p_value
    out["drop"] = bool(p_value <= alpha)
    return out


# ---------------------------------------------------------------- CBPE


def pool_adjacent_violators(y, w):
    """Weighted least-squares non-decreasing fit to ``y`` (isotonic regression).

    Parameters
    ----------
    y, w : array_like
        Values in order and their positive weights.

    Returns
    -------
    ndarray
        Fitted values, one per input, non-decreasing.

    Examples
    --------
    >>> pool_adjacent_violators([1.0, 3.0, 2.0, 4.0], [1, 1, 1, 1]).tolist()
    [1.0, 2.5, 2.5, 4.0]
    """
    y = np.asarray(y, dtype=float)
    w = np.asarray(w, dtype=float)
    if y.shape != w.shape or y.ndim != 1 or (w <= 0).any():
        raise ValueError("y and w must be 1-D of the same length with positive weights")
    values, weights, sizes = [], [], []
    for yi, wi in zip(y.tolist(), w.tolist()):
        values.append(yi)
        weights.append(wi)
        sizes.append(1)
        while len(values) > 1 and values[-2] > values[-1]:
            v2, w2, s2 = values.pop(), weights.pop(), sizes.pop()
            v1, w1, s1 = values.pop(), weights.pop(), sizes.pop()
            values.append((v1 * w1 + v2 * w2) / (w1 + w2))
            weights.append(w1 + w2)
            sizes.append(s1 + s2)
    return np.repeat(values, sizes)


CALIBRATION_GROUPS = 10
SPARSE_BIN_ROWS = 100


def calibration_test(scores, y, groups=CALIBRATION_GROUPS):
    """Hosmer-Lemeshow-style test that scores are calibrated probabilities.

    The rows, sorted by score, are split into ``groups`` equal-size groups;
    with O_g positives, E_g = sum of scores and V_g = sum s (1 - s) in group
    g, sum (O_g - E_g)^2 / V_g is chi-square with as many degrees of freedom
    as groups with V_g > 0 when P(y | s) = s (nothing is fitted, so no
    degrees of freedom are lost).

    Returns
    -------
    statistic, p_value : float

    Examples
    --------
    >>> s = np.full(100, 0.5)
    >>> calibration_test(s, np.arange(100) < 50, groups=1)
    (0.0, 1.0)
    """
    s = np.asarray(scores, dtype=float)
    y = np.asarray(y, dtype=float)
    order = np.argsort(s, kind="stable")
    stat, df, exact = 0.0, 0, True
    for idx in np.array_split(order, min(groups, s.size)):
        o, e, v = y[idx].sum(), s[idx].sum(), (s[idx] * (1 - s[idx])).sum()
        if v > 0:
            stat += (o - e) ** 2 / v
            df += 1
        elif abs(o - e) > 1e-9:
            exact = False  # scores of exactly 0 or 1 that were wrong
    if not exact:
        return float("inf"), 0.0
    return float(stat), float(chdtrc(df, stat)) if df else 1.0


class ConfidenceBasedEstimator:
    """Confidence-based performance estimation (CBPE) for a binary classifier.

    Estimates accuracy, precision, recall and F1 of unlabelled predictions
    from their scores, after checking (and if needed correcting) the
    scores' calibration on the labelled baseline.

    Parameters
    ----------
    positive : label
        The positive class, compared as ``str`` with the labels given to
        :meth:`fit` (pass ``True`` for boolean labels).
    calibration : {"auto", "isotonic", "none"}
        "isotonic" always maps scores through the fitted isotonic curve,
        "none" uses the scores as probabilities, "auto" (default) fits the
        curve only when :func:`calibration_test` on the baseline rejects
        calibrated scores at level ``alpha``.
    alpha : float
        Level of that test.

    Notes
    -----
    The isotonic curve is pool-adjacent-violators on binned scores: the
    baseline scores are cut into ``n_bins`` equal-width bins on [0, 1]; each
    non-empty bin gives a point (mean score, positive rate) weighted by its
    count; PAV makes the rates non-decreasing; a score is mapped by linear
    interpolation between the points (constant beyond the first and last).
    Interpolating rather than using the bin's step value keeps the estimate
    right when the score distribution inside a bin moves.

    Why "auto": a fitted curve is noisy where the baseline has few scores
    (a bin with 30 rows has a rate error of about 0.05). When the window's
    scores move into such a region, that noise becomes estimate error.
    Measured with calibrated scores (baseline Beta(2, 3); windows Beta(2, 3),
    Beta(5, 2), Beta(1, 4), Beta(0.5, 0.5); 40 seeds; 20,000 rows each),
    absolute error of the estimated accuracy: "isotonic" max 0.027 (95th
    percentile 0.013), "auto" max 0.012 (p95 0.006; it fitted the curve for
    2 of the 40 baselines), "none" max 0.009. With miscalibrated scores
    (P(y | s) = s^2, uniform baseline, four window shapes) "auto" always
    fitted the curve and erred by at most 0.016. When the scores are
    miscalibrated the
    curve is needed and the caveat stays: ``sparse_share`` in the estimate
    is the share of the window's rows whose bin held fewer than 100 baseline
    rows, so a caller can tell how much of the estimate rests on thin data.

    With calibrated probabilities p_i and predictions ``score >= threshold``
    the expected confusion counts are TP = sum p_i [pred = 1],
    FP = sum (1 - p_i) [pred = 1], FN = sum p_i [pred = 0],
    TN = sum (1 - p_i) [pred = 0], and the metrics follow from them.

    The estimate stays right under covariate shift (the score distribution
    moves) as long as P(y | score) does not change. It cannot see concept
    drift, where the same score no longer means the same probability; that
    needs labels (:class:`ClassificationAccumulator`,
    :class:`detectors.sequential.ErrorRateDetector`).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> s = rng.beta(2, 2, 20_000)
    >>> y = (rng.random(s.size) < s).astype(int)
    >>> cbpe = ConfidenceBasedEstimator(positive=1).fit(s, y)
    >>> cbpe.uses_isotonic, round(cbpe.estimate(s)["accuracy"], 3), round(float(np.mean((s >= 0.5) == y)), 3)
    (False, 0.687, 0.686)
    >>> cbpe = ConfidenceBasedEstimator(positive=1).fit(s, (rng.random(s.size) < s**2).astype(int))
    >>> cbpe.uses_isotonic, round(float(cbpe.calibrate([0.5])[0]), 2)
    (True, 0.25)
    """

    def __init__(self, positive=1, calibration="auto", alpha=0.05):
        if calibration not in ("auto", "isotonic", "none"):
            raise ValueError(f"calibration must be 'auto', 'isotonic' or 'none', got {calibration!r}")
        if not 0 < alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
        self.positive = str(positive)
        self.calibration = calibration
        self.alpha = float(alpha)
        self._reset()

    def _reset(self):
        self._knots = None  # mean baseline score of each non-empty bin
        self._values = None  # isotonic probability at each knot
        self._bin_counts = None  # baseline rows per equal-width bin
        self._p_value = None  # calibration_test on the baseline
        self._uses_isotonic = False
        self._n_fit = 0

    def fit(self, scores, y_true, n_bins=20):
        """Fit on labelled baseline data. Returns self.

        Rows with a NaN score or a missing label are left out.
        """
        n_bins = _positive_int("n_bins", n_bins)
        labels, missing = _labels(y_true)
        s, ok = _scores(scores, labels.size)
        ok &= ~missing
        s, y = s[ok], labels[ok] == self.positive
        if s.size == 0:
            raise ValueError("no rows with both a score and a label to fit on")
        b = _bin(s, n_bins)
        count = np.bincount(b, minlength=n_bins)
        used = count > 0
        mean_score = np.bincount(b, weights=s, minlength=n_bins)[used] / count[used]
        rate = np.bincount(b, weights=y.astype(float), minlength=n_bins)[used] / count[used]
        self._knots = mean_score
        self._values = pool_adjacent_violators(rate, count[used])
        self._bin_counts = count
        self._p_value = calibration_test(s, y)[1]
        self._uses_isotonic = self.calibration == "isotonic" or (self.calibration == "auto" and self._p_value <= self.alpha)
        self._n_fit = int(s.size)
        return self

    @property
    def is_fitted(self):
        return self._knots is not None

    @property
    def n_fit(self):
        """Rows the estimator was fitted on."""
        return self._n_fit

    @property
    def calibration_p_value(self):
        """p-value of :func:`calibration_test` on the baseline (None before fit)."""
        return self._p_value

    @property
    def uses_isotonic(self):
        """Whether scores go through the fitted isotonic curve (else they are used as they are)."""
        return self._uses_isotonic

    def calibrate(self, scores):
        """Probability of the positive class for each score (NaN stays NaN)."""
        if not self.is_fitted:
            raise ValueError("call fit() first")
        s = np.asarray(scores, dtype=float).ravel()
        if not self._uses_isotonic:
            return s.copy()
        out = np.interp(s, self._knots, self._values)
        out[np.isnan(s)] = np.nan
        return out

    def expected_counts(self, scores, threshold=0.5):
        """Expected ``{tp, fp, fn, tn, n, sparse}`` of a batch (sums over batches add up).

        ``sparse`` counts rows whose score bin held fewer than 100 baseline
        rows. Rows with a NaN score are left out.
        """
        p = self.calibrate(scores)
        s = np.asarray(scores, dtype=float).ravel()
        ok = ~np.isnan(s)
        s, p = s[ok], p[ok]
        if ((s < 0) | (s > 1)).any():
            raise ValueError("scores must be probabilities in [0, 1] (NaN = no score)")
        pred = s >= threshold
        sparse = self._bin_counts[_bin(s, self._bin_counts.size)] < SPARSE_BIN_ROWS
        return {
            "tp": float(p[pred].sum()),
            "fp": float((1 - p[pred]).sum()),
            "fn": float(p[~pred].sum()),
            "tn": float((1 - p[~pred]).sum()),
            "n": int(ok.sum()),
            "sparse": int(sparse.sum()),
        }

    @staticmethod
    def metrics_from_counts(counts):
        """Expected metrics from :meth:`expected_counts` output (summed over batches or not)."""
        tp, fp, fn, tn = (counts[k] for k in ("tp", "fp", "fn", "tn"))
        n = int(counts["n"])
        return {
            "n": n,
            "accuracy": _div(tp + tn, tp + fp + fn + tn),
            "precision": _div(tp, tp + fp),
            "recall": _div(tp, tp + fn),
            "f1": _f1(tp, fp, fn),
            "tp": tp,
            "fp": fp,
            "fn": fn,
            "tn": tn,
            "sparse_share": _div(counts["sparse"], n),
        }

    def estimate(self, scores, threshold=0.5):
        """Estimated metrics of unlabelled predictions ``score >= threshold``.

        Returns ``{n, accuracy, precision, recall, f1, tp, fp, fn, tn,
        sparse_share}`` (tp..tn are expected counts); None where undefined.
        """
        return self.metrics_from_counts(self.expected_counts(scores, threshold))

    def state_dict(self):
        """JSON-safe state (the fitted curve and the test result)."""
        fitted = self.is_fitted
        return {
            "positive": self.positive,
            "calibration": self.calibration,
            "alpha": self.alpha,
            "knots": self._knots.tolist() if fitted else None,
            "values": self._values.tolist() if fitted else None,
            "bin_counts": self._bin_counts.tolist() if fitted else None,
            "calibration_p_value": self._p_value,
            "uses_isotonic": self._uses_isotonic,
            "n_fit": self._n_fit,
        }

    def load_state_dict(self, d):
        """Restore :meth:`state_dict` output. Returns self."""
        saved = (str(d["positive"]), d["calibration"], float(d["alpha"]))
        if saved != (self.positive, self.calibration, self.alpha):
            raise ValueError(f"state was saved for (positive, calibration, alpha)={saved}")
        if d["knots"] is None:
            self._reset()
            return self
        knots = np.array(d["knots"], dtype=float)
        values = np.array(d["values"], dtype=float)
        counts = np.array(d["bin_counts"], dtype=np.int64)
        if knots.ndim != 1 or knots.shape != values.shape or knots.size == 0 or (np.diff(knots) <= 0).any():
            raise ValueError("knots must be strictly increasing, one value each")
        if (np.diff(values) < 0).any() or (values < 0).any() or (values > 1).any():
            raise ValueError("values must be non-decreasing probabilities")
        if counts.ndim != 1 or counts.size == 0 or (counts < 0).any() or int(np.count_nonzero(counts)) != knots.size:
            raise ValueError("bin_counts must have one non-zero count per knot")
        self._knots, self._values, self._bin_counts = knots, values, counts
        self._p_value = float(d["calibration_p_value"])
        self._uses_isotonic = bool(d["uses_isotonic"])
        self._n_fit = int(d["n_fit"])
        return self

    def __repr__(self):
        return (
            f"ConfidenceBasedEstimator(positive={self.positive!r}, calibration={self.calibration!r}, "
            f"n_fit={self._n_fit}, uses_isotonic={self._uses_isotonic})"
        )
