"""Streaming classification metrics: :class:`ClassificationAccumulator`.

Undefined values (a precision with no predicted positives, an AUC with one
class, ...) are None, never NaN, so results go straight into JSON.
"""

from __future__ import annotations

import numpy as np

from ._common import LOG_LOSS_EPS, MAX_CLASSES, OVERFLOW, _bin, _div, _f1, _labels, _Moments, _positive_int, _scores

__all__ = ["ClassificationAccumulator"]


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

    def merge(self, other):
        """Add another accumulator of the same configuration (another worker's rows). Returns self.

        Counts (confusion cells, score and calibration histograms, missing) add exactly, whatever the
        order in which each side met the classes; the log-loss moments merge by Chan's formula. Exact
        while the classes fit in ``MAX_CLASSES``: beyond it, which classes are pooled as overflow depends
        on the order of first appearance, as it does for one accumulator.
        """
        if not isinstance(other, ClassificationAccumulator):
            raise TypeError(f"cannot merge {type(other).__name__} into ClassificationAccumulator")
        mine = (self.classes, self.positive, self.n_bins_calibration, self.score_bins)
        if mine != (other.classes, other.positive, other.n_bins_calibration, other.score_bins):
            raise ValueError("can only merge accumulators with the same classes, positive and bins")
        index = np.array([self._class_index(name) for name in other._names], dtype=np.int64)
        if index.size:
            np.add.at(self._cm, (index[:, None], index[None, :]), other._cm)
        self._correct += other._correct
        self._missing += other._missing
        self._pos_hist += other._pos_hist
        self._neg_hist += other._neg_hist
        self._log_loss.merge(other._log_loss)
        self._cal_n += other._cal_n
        self._cal_score += other._cal_score
        self._cal_pos += other._cal_pos
        return self

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
