"""Multivariate drift: changes no single feature shows, such as a flipped correlation.

Two window detectors over a table of numeric and categorical features:

* :class:`PCAReconstruction`: the baseline's principal components keep a share
  of its variance; a window whose rows are reconstructed worse (or better) from
  them than the baseline's own held-out rows has changed how features move
  together. Cheap (one small matrix product per batch) and exactly mergeable.
* :class:`DomainClassifier`: a gradient-boosted classifier tries to tell a
  bounded sample of the window from the baseline's sample; a held-out ROC AUC
  above chance, tested with the Mann-Whitney U null, is drift. Sees any
  difference a tree ensemble can learn, but costs a model fit per evaluation,
  so the service runs it off the consuming thread, rate-limited.

Both share :class:`TableEncoder`. Each detector is fitted on the baseline side
(``fit_baseline`` returns a JSON-safe artefact stored in the baseline file),
built from that artefact plus its config, fed with ``update(columns)`` (one
batch: a dict of numpy float arrays for numeric features and sequences of
category values for categorical ones), and read with ``result()`` (a typed,
frozen dataclass with ``to_dict()``). ``merge`` combines two partial windows;
``state_dict``/``load_state_dict`` checkpoint them.
"""

from __future__ import annotations

import copy
import numbers
from dataclasses import asdict, dataclass
from itertools import repeat

import numpy as np
from scipy import stats as sps

__all__ = [
    "ClassifierResult",
    "DomainClassifier",
    "PCAReconstruction",
    "PCAResult",
    "TableEncoder",
    "category_name",
    "single_threaded_blas",
]

KINDS = ("numeric", "categorical")
MAX_CACHED_NAMES = 10_000
_controller = None


def single_threaded_blas():
    """A context in which BLAS runs on one thread.

    The products here are small (a batch of rows times a basis of tens of
    columns); threaded OpenBLAS on a shared 2-core machine made them up to 20x
    slower (6 ms against 0.35 ms for 2 000 x 18 x 55), and the consuming
    thread should not take a second core anyway. Costs about 6 us per use.
    """
    global _controller
    if _controller is None:
        from threadpoolctl import ThreadpoolController

        _controller = ThreadpoolController()
    return _controller.limit(limits=1, user_api="blas")


def category_name(value):
    """A category as text (None for missing); integral floats as ints, so 1.0 and 1 are one category.

    The same normalization as the baseline's category profiles.
    """
    if value is None or (isinstance(value, float) and value != value):
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _check_number(name, value, low, high, integer=False, low_open=False, high_open=False):
    bad = isinstance(value, bool) or not isinstance(value, numbers.Integral if integer else numbers.Real)
    if not bad:
        bad = value < low or value > high or (low_open and value == low) or (high_open and value == high)
    if bad:
        kind = "an integer" if integer else "a number"
        lo, hi = ("(" if low_open else "["), (")" if high_open else "]")
        raise ValueError(f"{name} must be {kind} in {lo}{low}, {high}{hi}, got {value!r}")


def _nan_to_none(a):
    return [[None if v != v else float(v) for v in row] for row in np.asarray(a, dtype=float).tolist()]


def _from_rows(rows, width):
    a = np.array([[np.nan if v is None else v for v in row] for row in rows], dtype=float)
    return a.reshape(len(rows), width)


class _Lookup(dict):
    """Category name -> index, plus a bounded cache of rarer names -> the "other" index."""

    def __init__(self, categories):
        super().__init__((name, float(i)) for i, name in enumerate(categories))
        self.known = list(categories)


class TableEncoder:
    """Turns feature columns into a float matrix, the same way for baseline and windows.

    Parameters
    ----------
    names : list of str
        Feature order.
    kinds : list of {"numeric", "categorical"}
        Type of each feature.
    means, stds : list of float
        Per numeric feature (None for categorical ones): baseline mean and
        population std (0 for a constant feature).
    categories : list of list of str
        Per categorical feature (None for numeric ones): the baseline's most
        frequent categories; every other value (rarer or unseen) is "other".
    frequencies : list of list of float
        Per categorical feature: baseline share of each category, then of
        "other", among its non-missing values.

    Notes
    -----
    :meth:`codes` keeps numeric values as they are and gives a categorical
    value its category's index (``len(categories)`` for "other"), NaN for
    missing: the input of the domain classifier, which handles missing values
    and categories natively. :meth:`standardized` is the PCA input: numeric
    features as z-scores, categorical ones one-hot with each indicator
    standardized by its baseline share; a missing value becomes the baseline
    mean (0), so missingness by itself does not move the reconstruction error
    (the univariate missing ratios watch it).
    """

    def __init__(self, names, kinds, means, stds, categories, frequencies):
        self.names = [str(n) for n in names]
        self.kinds = list(kinds)
        if len(set(self.names)) != len(self.names) or not self.names:
            raise ValueError("names must be unique and not empty")
        if any(k not in KINDS for k in self.kinds) or len(self.kinds) != len(self.names):
            raise ValueError(f"one kind per name, each one of {KINDS}")
        self.means = [None if m is None else float(m) for m in means]
        self.stds = [None if s is None else float(s) for s in stds]
        self.categories = [None if c is None else [str(x) for x in c] for c in categories]
        self.frequencies = [None if f is None else [float(x) for x in f] for f in frequencies]
        self._lookup = [None if c is None else _Lookup(c) for c in self.categories]
        # standardized() layout: one column per numeric feature, len(categories) + 1 per categorical one
        widths = [1 if k == "numeric" else len(c) + 1 for k, c in zip(self.kinds, self.categories)]
        self.width = int(sum(widths))
        self._offsets = np.concatenate([[0], np.cumsum(widths)]).astype(int)[:-1].tolist()
        center, scale = [], []
        for kind, m, s, f in zip(self.kinds, self.means, self.stds, self.frequencies):
            if kind == "numeric":
                center.append(m)
                scale.append(s if s else 1.0)
            else:
                f = np.asarray(f, dtype=float)
                center.extend(f.tolist())
                sd = np.sqrt(f * (1.0 - f))
                scale.extend(np.where(sd > 0, sd, 1.0).tolist())
        self._center = np.array(center, dtype=float)
        self._scale = np.array(scale, dtype=float)

    @classmethod
    def fit(cls, columns, kinds, max_categories=20):
        """Learn means, stds and categories from baseline ``columns`` (name -> values)."""
        _check_number("max_categories", max_categories, 1, 250, integer=True)
        names, kind_list, means, stds, cats, freqs = [], [], [], [], [], []
        for name, kind in kinds.items():
            values = columns[name]
            names.append(name)
            kind_list.append(kind)
            if kind == "numeric":
                x = np.asarray(values, dtype=float)
                x = x[np.isfinite(x)]
                means.append(float(x.mean()) if x.size else 0.0)
                stds.append(float(x.std()) if x.size else 0.0)
                cats.append(None)
                freqs.append(None)
            elif kind == "categorical":
                counts = {}
                for v in values:
                    key = category_name(v)
                    if key is not None:
                        counts[key] = counts.get(key, 0) + 1
                ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
                top = ranked[:max_categories]
                total = sum(counts.values())
                other = total - sum(c for _, c in top)
                means.append(None)
                stds.append(None)
                cats.append([k for k, _ in top])
                freqs.append([c / total if total else 0.0 for c in [c for _, c in top] + [other]])
            else:
                raise ValueError(f"feature {name!r}: kind must be one of {KINDS}, got {kind!r}")
        return cls(names, kind_list, means, stds, cats, freqs)

    def _category_codes(self, values, lookup):
        n = len(values)
        codes = np.fromiter(map(lookup.get, values, repeat(-1.0)), dtype=float, count=n)
        miss = np.flatnonzero(codes < 0)
        if miss.size:  # non-text values, rarer or unseen names, missing: the slow path, only for them
            other = float(len(lookup.known))
            for i in miss.tolist():
                value = values[i]
                key = category_name(value)
                codes[i] = np.nan if key is None else lookup.get(key, other)
                if key is not None and type(value) is str and len(lookup) < MAX_CACHED_NAMES:
                    lookup[value] = codes[i]  # the next batch finds this name on the fast path
        return codes

    def codes(self, columns):
        """``(n, len(names))`` float matrix: numeric values, category indices; NaN = missing."""
        n = len(columns[self.names[0]])
        out = np.empty((n, len(self.names)))
        for j, (name, lookup) in enumerate(zip(self.names, self._lookup)):
            values = columns[name]
            if len(values) != n:
                raise ValueError(f"column {name!r} has {len(values)} values, expected {n}")
            if lookup is None:
                x = np.asarray(values, dtype=float)
                out[:, j] = np.where(np.isfinite(x), x, np.nan)
            else:
                out[:, j] = self._category_codes(values, lookup)
        return out

    def standardized_codes(self, codes):
        """``(n, width)`` standardized matrix from :meth:`codes` output (see Notes)."""
        n = codes.shape[0]
        out = np.zeros((n, self.width))
        rows = np.arange(n)
        for j, (kind, off) in enumerate(zip(self.kinds, self._offsets)):
            c = codes[:, j]
            if kind == "numeric":
                out[:, off] = c
            else:
                ok = ~np.isnan(c)
                out[rows[ok], off + c[ok].astype(int)] = 1.0
        out -= self._center
        out /= self._scale
        # a missing numeric value is the baseline mean; a missing category has no indicator: both read as 0
        np.nan_to_num(out, copy=False, nan=0.0)
        for j, (kind, off) in enumerate(zip(self.kinds, self._offsets)):
            if kind == "categorical":
                missing = np.isnan(codes[:, j])
                if missing.any():
                    out[missing, off:off + len(self.categories[j]) + 1] = 0.0
        return out

    def standardized(self, columns):
        """``(n, width)`` standardized matrix of ``columns``."""
        return self.standardized_codes(self.codes(columns))

    @property
    def categorical_mask(self):
        """Per :meth:`codes` column, whether it holds category indices."""
        return np.array([k == "categorical" for k in self.kinds])

    def to_dict(self):
        return {"names": list(self.names), "kinds": list(self.kinds), "means": list(self.means),
                "stds": list(self.stds), "categories": [None if c is None else list(c) for c in self.categories],
                "frequencies": [None if f is None else list(f) for f in self.frequencies]}

    @classmethod
    def from_dict(cls, d):
        return cls(d["names"], d["kinds"], d["means"], d["stds"], d["categories"], d["frequencies"])


# ---------------------------------------------------------------------------------------------------
# PCA data reconstruction error


@dataclass(frozen=True)
class PCAResult:
    """One window's PCA reconstruction verdict.

    ``error`` is the window's mean reconstruction error (Euclidean distance, in
    standardized units, between a row and its reconstruction from the kept
    components); ``baseline_error`` and ``baseline_error_std`` are the mean and
    std of the per-row error on held-out baseline rows. ``effect`` is the shift
    of the mean in per-row stds; ``z`` and ``p_value`` the two-sided test of
    the shift (see :class:`PCAReconstruction`).
    """

    status: str
    drift: bool
    events: int
    error: float | None
    baseline_error: float
    baseline_error_std: float
    effect: float | None
    threshold: float
    z: float | None
    p_value: float | None
    alpha: float
    components: int
    features: int

    def to_dict(self):
        return asdict(self)


class PCAReconstruction:
    """Drift in how features move together, by PCA data reconstruction error.

    Parameters
    ----------
    model : dict
        The artefact of :meth:`fit_baseline` (stored in the baseline file).
    alpha : float
        False-alarm rate per window of the test.
    threshold : float
        Minimum absolute shift of the window's mean error, in stds of the
        baseline's per-row error, for a drift (the effect gate: in big windows
        any hair-thin shift is significant). Default 0.1.
    min_events : int
        Windows with fewer rows report ``insufficient_data`` and never drift.

    Notes
    -----
    **Fit** (baseline side). The baseline rows are standardized by
    :class:`TableEncoder` and shuffled (seeded); PCA (an eigendecomposition of
    the covariance) is fitted on the first half, keeping the fewest
    components that explain ``variance`` (65%, as NannyML) of it. The
    per-row reconstruction error (the Euclidean norm of the part of a row
    outside the kept components) is measured on the *other* half, so its mean
    and std are out-of-sample, like a window's.

    **Decision.** With window mean error ``e_w`` over ``n`` rows and held-out
    mean ``e_b`` and std ``s`` over ``m`` rows, the distribution of the mean
    error over baseline chunks of ``n`` rows is, by the central limit theorem,
    normal with std ``s / sqrt(n)``; allowing for the uncertainty of ``e_b``
    too, ``z = (e_w - e_b) / (s * sqrt(1/n + 1/m))`` and the two-sided
    p-value ``2 * (1 - Phi(|z|))``. A window drifts when ``p <= alpha`` and
    ``|e_w - e_b| / s >= threshold``. A rise means rows now vary along
    directions the baseline did not (a flipped correlation); a fall, that
    they vary less (a stuck feature).

    **Cost.** One product of the standardized batch with the smaller of the
    kept or dropped basis; memory is the basis plus three numbers per window.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> def draw(n, rho):
    ...     a, b = rng.normal(size=(2, n))
    ...     return {"x": a, "y": rho * a + np.sqrt(1 - rho ** 2) * b, "z": rng.normal(size=n)}
    >>> kinds = {"x": "numeric", "y": "numeric", "z": "numeric"}
    >>> model = PCAReconstruction.fit_baseline(draw(20_000, 0.8), kinds)
    >>> PCAReconstruction(model).update(draw(5_000, 0.8)).result().drift
    False
    >>> PCAReconstruction(model).update(draw(5_000, -0.8)).result().drift
    True
    """

    def __init__(self, model, alpha=0.01, threshold=0.1, min_events=100):
        _check_number("alpha", alpha, 0, 1, low_open=True, high_open=True)
        _check_number("threshold", threshold, 0, float("inf"), high_open=True)
        _check_number("min_events", min_events, 1, float("inf"), integer=True)
        self.model = model
        self.alpha = float(alpha)
        self.threshold = float(threshold)
        self.min_events = int(min_events)
        self.encoder = TableEncoder.from_dict(model["encoder"])
        self._basis = np.array(model["basis"], dtype=float).reshape(self.encoder.width, -1)
        self._kept = model["basis_kind"] == "kept"
        self._mean = np.array(model["center"], dtype=float)
        self._prepare()
        self._reset()

    def _prepare(self):
        # Windows never build the standardized one-hot matrix: its product with the basis is a lookup of
        # one precomputed row per category (and its squared norm one number), and the numeric part is
        # one product. The PCA center rides along as an extra basis column (for z . center).
        enc = self.encoder
        basis = np.column_stack([self._basis, self._mean])
        numeric = [j for j, k in enumerate(enc.kinds) if k == "numeric"]
        rows = [enc._offsets[j] for j in numeric]
        self._numeric = [enc.names[j] for j in numeric]
        self._num_center = enc._center[rows]
        self._num_scale = enc._scale[rows]
        self._num_basis = basis[rows]
        self._tables = []
        for j, kind in enumerate(enc.kinds):
            if kind != "categorical":
                continue
            lo, hi = enc._offsets[j], enc._offsets[j] + len(enc.categories[j]) + 1
            f, sd, block = enc._center[lo:hi], enc._scale[lo:hi], basis[lo:hi]
            base = (f / sd) @ block
            # row c: the standardized indicator vector (e_c - f) / sd times the basis; last row: missing (0)
            table = np.vstack([block / sd[:, None] - base, np.zeros(basis.shape[1])])
            const = float(np.sum((f / sd) ** 2))
            norms = np.r_[const - (f / sd) ** 2 + ((1 - f) / sd) ** 2, 0.0]
            self._tables.append((enc.names[j], enc._lookup[j], table, norms))
        self._center_projected = self._mean @ self._basis
        self._center_sq = float(self._mean @ self._mean)

    def _errors_from_columns(self, columns):
        """Per-row errors of raw columns; the same as ``_errors(encoder.standardized(columns))``, faster."""
        if self._numeric:
            x = np.column_stack([np.asarray(columns[name], dtype=float) for name in self._numeric])
            z = (x - self._num_center) / self._num_scale
            np.nan_to_num(z, copy=False, nan=0.0, posinf=0.0, neginf=0.0)  # missing -> the mean
            with single_threaded_blas():
                p = z @ self._num_basis
            sq = np.einsum("ij,ij->i", z, z) if self._kept else None
        else:
            n = len(columns[self._tables[0][0]])
            p, sq = np.zeros((n, self._basis.shape[1] + 1)), (np.zeros(n) if self._kept else None)
        for name, lookup, table, norms in self._tables:
            codes = self.encoder._category_codes(columns[name], lookup)
            idx = np.where(np.isnan(codes), table.shape[0] - 1, codes).astype(np.intp)
            p += table[idx]
            if self._kept:
                sq += norms[idx]
        dot_center = p[:, -1]
        p = p[:, :-1] - self._center_projected
        err = np.einsum("ij,ij->i", p, p)
        if self._kept:
            err = sq - 2.0 * dot_center + self._center_sq - err
        return np.sqrt(np.maximum(err, 0.0))

    def _reset(self):
        self._n = 0
        self._sum = 0.0

    @staticmethod
    def fit_baseline(columns, kinds, variance=0.65, max_categories=20, max_rows=200_000, seed=0):
        """Fit the model on baseline ``columns`` (name -> values) of the features in ``kinds``.

        Parameters
        ----------
        kinds : dict
            Feature name -> ``"numeric"`` or ``"categorical"``.
        variance : float
            Share of the standardized variance the kept components explain.
        max_rows : int
            At most this many rows (a seeded sample) are used.

        Returns
        -------
        dict
            JSON-safe artefact for the constructor.
        """
        _check_number("variance", variance, 0, 1, low_open=True, high_open=True)
        encoder = TableEncoder.fit(columns, kinds, max_categories=max_categories)
        x = encoder.standardized(columns)
        rng = np.random.default_rng(seed)
        order = rng.permutation(x.shape[0])[:max_rows]
        if order.size < 2 * (encoder.width + 10):
            raise ValueError(f"PCA reconstruction needs at least {2 * (encoder.width + 10)} baseline rows "
                             f"for {encoder.width} encoded columns, got {order.size}")
        half = order.size // 2
        fit, held = x[order[:half]], x[order[half:]]
        center = fit.mean(axis=0)
        eigval, eigvec = np.linalg.eigh(np.cov(fit - center, rowvar=False, bias=True))
        eigval, eigvec = np.clip(eigval[::-1], 0.0, None), eigvec[:, ::-1]
        total = eigval.sum()
        share = np.cumsum(eigval) / total if total > 0 else np.ones_like(eigval)
        k = int(min(np.searchsorted(share, variance - 1e-12) + 1, eigval.size))
        kept = k <= eigval.size - k  # the smaller basis makes the cheaper product
        basis = eigvec[:, :k] if kept else eigvec[:, k:]
        model = {"method": "pca_reconstruction", "encoder": encoder.to_dict(), "center": center.tolist(),
                 "basis_kind": "kept" if kept else "dropped", "basis": basis.tolist(), "components": k,
                 "explained_variance": float(share[k - 1]), "rows_fit": int(half)}
        errors = PCAReconstruction(dict(model, error_mean=0.0, error_std=1.0, rows_held_out=1))._errors(held)
        model.update(error_mean=float(errors.mean()), error_std=float(errors.std()), rows_held_out=int(held.shape[0]))
        return model

    def _errors(self, standardized):
        z = standardized - self._mean
        with single_threaded_blas():
            p = z @ self._basis
        sq = np.einsum("ij,ij->i", p, p)
        if self._kept:
            sq = np.einsum("ij,ij->i", z, z) - sq
        return np.sqrt(np.maximum(sq, 0.0))

    def update(self, columns):
        """Add one batch (feature name -> values). Returns self."""
        errors = self._errors_from_columns(columns)
        if errors.size:
            self._n += errors.size
            self._sum += float(errors.sum())
        return self

    def merge(self, other):
        """Add another partial window of the same model (exact). Returns self."""
        if other.model is not self.model and other.model != self.model:
            raise ValueError("can only merge detectors of the same baseline model")
        self._n += other._n
        self._sum += other._sum
        return self

    @property
    def n(self):
        return self._n

    def result(self):
        """The window's :class:`PCAResult`."""
        m = self.model
        mu, sd, m_rows = m["error_mean"], m["error_std"], m["rows_held_out"]
        base = dict(events=self._n, baseline_error=mu, baseline_error_std=sd, threshold=self.threshold,
                    alpha=self.alpha, components=m["components"], features=len(self.encoder.names))
        if self._n == 0:
            return PCAResult(status="insufficient_data", drift=False, error=None, effect=None, z=None, p_value=None,
                             **base)
        error = self._sum / self._n
        if self._n < self.min_events or sd <= 0:
            return PCAResult(status="insufficient_data", drift=False, error=error, effect=None, z=None, p_value=None,
                             **base)
        effect = (error - mu) / sd
        z = (error - mu) / (sd * np.sqrt(1.0 / self._n + 1.0 / m_rows))
        p = float(2.0 * sps.norm.sf(abs(z)))
        drift = bool(p <= self.alpha and abs(effect) >= self.threshold)
        return PCAResult(status="ok", drift=drift, error=error, effect=float(effect), z=float(z), p_value=p, **base)

    def state_dict(self):
        return {"n": self._n, "sum": self._sum}

    def load_state_dict(self, d):
        n = int(d["n"])
        if n < 0:
            raise ValueError("n must be >= 0")
        self._n, self._sum = n, float(d["sum"])
        return self

    def __repr__(self):
        return f"PCAReconstruction(features={len(self.encoder.names)}, components={self.model['components']}, n={self._n})"


# ---------------------------------------------------------------------------------------------------
# Domain classifier


@dataclass(frozen=True)
class ClassifierResult:
    """One window's domain-classifier verdict.

    ``auc`` is the held-out ROC AUC of telling window rows from baseline rows
    (0.5: indistinguishable); ``p_value`` its one-sided Mann-Whitney p-value.
    """

    status: str
    drift: bool
    events: int
    sample: int
    reference: int
    auc: float | None
    threshold: float
    p_value: float | None
    alpha: float

    def to_dict(self):
        return asdict(self)


class DomainClassifier:
    """Drift as separability: can a classifier tell the window from the baseline?

    Parameters
    ----------
    model : dict
        The artefact of :meth:`fit_baseline`: the encoder and a seeded sample
        of baseline rows (the reference).
    alpha : float
        False-alarm rate per window.
    threshold : float
        Minimum held-out AUC for a drift (default 0.55): the effect gate.
    sample_size : int
        The window keeps a uniform sample of at most this many rows
        (reservoir sampling), so memory is bounded whatever the window size.
    min_events : int
        Windows with fewer rows report ``insufficient_data``.
    max_iter, max_leaf_nodes, learning_rate : int, int, float
        Of scikit-learn's ``HistGradientBoostingClassifier``.
    seed : int
        Seeds the reservoir, the train/test split and the model.

    Notes
    -----
    **Why this classifier.** A flipped correlation leaves every marginal
    unchanged, so a linear model on the raw features cannot see it; trees can
    (they split on one feature, then on another). scikit-learn's
    ``HistGradientBoostingClassifier`` is a well-kept, fast (binned, OpenMP)
    implementation that takes missing values and categorical features
    natively, so no imputation or one-hot expansion is needed. It is fitted
    on one OpenMP thread: on a shared machine more threads cost more than
    they save at these sizes (0.09 s against 0.4 s for 2 x 1 000 rows).

    **Test.** The window sample and the reference are each split in half
    (seeded); the model is trained on one half of each and scores the other
    halves. Under no drift the held-out rows of both sides are exchangeable
    given the trained model, so the Mann-Whitney U test of "window rows score
    higher" is exact (up to its normal approximation with tie correction),
    with no permutations: one fit per evaluation. AUC = U / (n_window *
    n_reference) of the held-out halves. A window drifts when
    ``p <= alpha`` and ``auc >= threshold``.

    **Cost.** :meth:`update` is a reservoir update (one random draw per row);
    :meth:`result` fits a model (about 0.1 s for 2 x 1 000 rows of 25
    features on one core), so call it off the consuming thread.
    """

    def __init__(self, model, alpha=0.01, threshold=0.55, sample_size=1000, min_events=100, max_iter=50,
                 max_leaf_nodes=15, learning_rate=0.1, seed=0):
        _check_number("alpha", alpha, 0, 1, low_open=True, high_open=True)
        _check_number("threshold", threshold, 0.5, 1)
        _check_number("sample_size", sample_size, 20, 1_000_000, integer=True)
        _check_number("min_events", min_events, 1, float("inf"), integer=True)
        _check_number("max_iter", max_iter, 1, 10_000, integer=True)
        _check_number("max_leaf_nodes", max_leaf_nodes, 2, 10_000, integer=True)
        _check_number("learning_rate", learning_rate, 0, 10, low_open=True)
        _check_number("seed", seed, 0, 2**63 - 1, integer=True)
        self.model = model
        self.alpha = float(alpha)
        self.threshold = float(threshold)
        self.sample_size = int(sample_size)
        self.min_events = int(min_events)
        self.max_iter = int(max_iter)
        self.max_leaf_nodes = int(max_leaf_nodes)
        self.learning_rate = float(learning_rate)
        self.seed = int(seed)
        self.encoder = TableEncoder.from_dict(model["encoder"])
        self.reference = _from_rows(model["reference"], len(self.encoder.names))
        self._reset()

    def _reset(self):
        self._n = 0
        self._sample = np.empty((0, len(self.encoder.names)))
        self._rng = np.random.default_rng(self.seed)
        self._keyed = False  # the stream is keyed by the first rows on first use (see _stream)

    def _stream(self):
        """The reservoir's random stream, keyed on first use by ``seed`` and the rows the reservoir holds then.

        Every partial of a window is built by a twin with the same ``seed``; streams from the seed alone
        would pick the same slots in every partial, and their merge would keep row i of one partial with
        row i of the other far more often than a uniform sample does. The first draw comes only once the
        reservoir is full (or at a merge), when it holds exactly the partial's first rows whatever the batch
        sizes, so the key is reproducible and differs between partials that saw different rows.
        """
        if not self._keyed:
            # SeedSequence hashes all the words of its entropy; the bytes of NaN are fixed, so this is exact
            words = np.frombuffer(np.ascontiguousarray(self._sample, dtype=np.float64).tobytes(), dtype=np.uint32)
            self._rng = np.random.default_rng([self.seed, *words.tolist()])
            self._keyed = True
        return self._rng

    @staticmethod
    def fit_baseline(columns, kinds, sample_size=1000, max_categories=20, seed=0):
        """The artefact: the encoder and a seeded uniform sample of ``sample_size`` baseline rows."""
        _check_number("sample_size", sample_size, 20, 1_000_000, integer=True)
        encoder = TableEncoder.fit(columns, kinds, max_categories=max_categories)
        codes = encoder.codes(columns)
        rng = np.random.default_rng(seed)
        rows = np.sort(rng.permutation(codes.shape[0])[:sample_size])
        if rows.size < 20:
            raise ValueError(f"the domain classifier needs at least 20 baseline rows, got {rows.size}")
        return {"method": "domain_classifier", "encoder": encoder.to_dict(), "reference": _nan_to_none(codes[rows])}

    def update(self, columns):
        """Add one batch (feature name -> values) to the window's reservoir sample. Returns self."""
        return self.update_codes(self.encoder.codes(columns))

    def update_codes(self, codes):
        """Add rows already encoded by ``encoder.codes``. Returns self."""
        m = codes.shape[0]
        if m == 0:
            return self
        room = max(0, self.sample_size - self._sample.shape[0])
        if room:
            self._sample = np.vstack([self._sample, codes[:room]])
        rest = codes[room:]
        if rest.shape[0]:
            # Algorithm R, vectorized: row t (0-based over the window) replaces slot j ~ U{0..t} when j < size;
            # of several rows landing on one slot the last one wins, as in the sequential algorithm.
            t = self._n + room + np.arange(rest.shape[0])
            j = (self._stream().random(rest.shape[0]) * (t + 1)).astype(np.int64)
            hit = np.flatnonzero(j < self.sample_size)
            if hit.size:
                slots = j[hit]
                _, last = np.unique(slots[::-1], return_index=True)
                keep = hit[hit.size - 1 - last]
                self._sample[j[keep]] = rest[keep]
        self._n += m
        return self

    def merge(self, other):
        """Combine with another partial window. Returns self.

        The merged sample is distributed as the reservoir of one process that saw both partials: ``k`` =
        min(sample_size, both counts) rows, of which the number from this partial is hypergeometric (k
        draws without replacement from the union: weighted by the counts seen), each part a uniform subset
        of its partial's reservoir (itself a uniform sample of that partial). Seeded: the draws come from
        this partial's stream (keyed by ``seed`` and its first rows), so a merge is reproducible.
        """
        if other.model is not self.model and other.model != self.model:
            raise ValueError("can only merge detectors of the same baseline model")
        total = self._n + other._n
        k = min(self.sample_size, total)
        if total and other._n:
            rng = self._stream()
            mine = int(rng.hypergeometric(self._n, other._n, k)) if self._n else 0
            a = self._sample[rng.permutation(self._sample.shape[0])[:mine]]
            b = other._sample[rng.permutation(other._sample.shape[0])[:k - mine]]
            self._sample = np.vstack([a, b])
        self._n = total
        return self

    @property
    def n(self):
        return self._n

    def copy(self):
        """An independent detector with the same state (to evaluate on another thread)."""
        other = copy.copy(self)
        other._sample = self._sample.copy()
        other._rng = copy.deepcopy(self._rng)
        return other

    @property
    def sample(self):
        """The window's sample of encoded rows (a copy)."""
        return self._sample.copy()

    def result(self):
        """Fit the classifier and test it: the window's :class:`ClassifierResult` (expensive)."""
        base = dict(events=self._n, sample=int(self._sample.shape[0]), reference=int(self.reference.shape[0]),
                    threshold=self.threshold, alpha=self.alpha)
        if self._n < self.min_events or self._sample.shape[0] < 20:
            return ClassifierResult(status="insufficient_data", drift=False, auc=None, p_value=None, **base)
        auc, p = self._test(self._sample)
        drift = bool(p <= self.alpha and auc >= self.threshold)
        return ClassifierResult(status="ok", drift=drift, auc=auc, p_value=p, **base)

    def _test(self, sample):
        from sklearn.ensemble import HistGradientBoostingClassifier
        from threadpoolctl import threadpool_limits

        # The split depends on the seed and the window's size only, so a result is reproducible.
        rng = np.random.default_rng([self.seed, self._n])
        ref = self.reference[rng.permutation(self.reference.shape[0])]
        win = sample[rng.permutation(sample.shape[0])]
        r2, w2 = ref.shape[0] // 2, win.shape[0] // 2
        x_train = np.vstack([ref[:r2], win[:w2]])
        y_train = np.r_[np.zeros(r2), np.ones(w2)]
        clf = HistGradientBoostingClassifier(
            max_iter=self.max_iter, max_leaf_nodes=self.max_leaf_nodes, learning_rate=self.learning_rate,
            early_stopping=False, categorical_features=self.encoder.categorical_mask,
            random_state=int(rng.integers(2**31 - 1)))
        with threadpool_limits(limits=1, user_api="openmp"):
            clf.fit(x_train, y_train)
            s_ref = clf.predict_proba(ref[r2:])[:, 1]
            s_win = clf.predict_proba(win[w2:])[:, 1]
        u = sps.mannwhitneyu(s_win, s_ref, alternative="greater")
        auc = float(u.statistic) / (s_win.size * s_ref.size)
        return auc, float(u.pvalue)

    def state_dict(self):
        return {"n": self._n, "sample": _nan_to_none(self._sample), "keyed": self._keyed,
                "rng": {k: str(v) if isinstance(v, int) else v for k, v in _flat_rng(self._rng).items()}}

    def load_state_dict(self, d):
        sample = _from_rows(d["sample"], len(self.encoder.names))
        if sample.shape[0] > self.sample_size or int(d["n"]) < sample.shape[0]:
            raise ValueError(f"sample of {sample.shape[0]} rows for n={d['n']} and sample_size={self.sample_size}")
        self._n = int(d["n"])
        self._sample = sample
        self._rng = _rng_from_flat(d["rng"])
        self._keyed = bool(d.get("keyed", True))  # a checkpoint from before keyed streams: go on with its stream
        return self

    def __repr__(self):
        return f"DomainClassifier(features={len(self.encoder.names)}, sample_size={self.sample_size}, n={self._n})"


def _flat_rng(rng):
    s = rng.bit_generator.state
    return {"state": s["state"]["state"], "inc": s["state"]["inc"], "has_uint32": s["has_uint32"],
            "uinteger": s["uinteger"]}


def _rng_from_flat(d):
    rng = np.random.default_rng()
    rng.bit_generator.state = {"bit_generator": "PCG64", "state": {"state": int(d["state"]), "inc": int(d["inc"])},
                               "has_uint32": int(d["has_uint32"]), "uinteger": int(d["uinteger"])}
    return rng
