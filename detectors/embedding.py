"""Drift of an embedding feature: a fixed-length vector of floats per event.

:class:`EmbeddingDrift` projects every vector on the baseline's top principal
components, whitened (unit variance along each), plus the norm of what is
left outside them (the residual), and keeps per window only

* the sum of the whitened projections, for the **mean distance** test: how far
  the window's mean vector is from the baseline's, in baseline standard
  deviations along the principal axes, with a chi-square test;
* counts of each projection (and of the residual norm) in the baseline's
  quantile bins, for the **histograms** test: a chi-square test per
  component, Holm-corrected, which sees changes of spread and shape that
  leave the mean alone.

Memory per window is ``k + (k + 1) * bins`` numbers whatever its size, and
both summaries merge exactly. The baseline side is :meth:`EmbeddingDrift.fit_baseline`,
whose JSON-safe artefact goes into the baseline file.
"""

from __future__ import annotations

import numbers
from dataclasses import asdict, dataclass

import numpy as np
from scipy import integrate
from scipy import stats as sps

from .multivariate import single_threaded_blas
from .stats import chi2_homogeneity, holm, js_distance

__all__ = ["EmbeddingDrift", "EmbeddingResult", "HistogramsResult", "MeanDistanceResult", "weighted_chi2_sf"]

METHODS = ("mean_distance", "histograms")


def _check(name, value, low, high, integer=False, open_low=False, open_high=False):
    bad = isinstance(value, bool) or not isinstance(value, numbers.Integral if integer else numbers.Real)
    if not bad:
        bad = value < low or value > high or (open_low and value == low) or (open_high and value == high)
    if bad:
        raise ValueError(f"{name} must be {'an integer' if integer else 'a number'} between {low} and {high}, "
                         f"got {value!r}")


@dataclass(frozen=True)
class MeanDistanceResult:
    """The mean-distance test of one window.

    ``distance``: the distance between the window's and the baseline's mean
    vectors in the whitened principal subspace (baseline stds along the
    principal axes). ``residual_distance``: the rest of the mean shift, outside
    that subspace, in the baseline's average std per residual dimension, with
    its expected value under no drift subtracted (so it reads about 0 without
    drift, whatever the dimension). ``centroid_distance``: the Euclidean
    distance between the raw mean vectors divided by the baseline's RMS
    distance to its mean, ``sqrt(trace Sigma)`` (for reading only).
    ``p_value_principal`` and ``p_value_residual``: the two parts' tests;
    ``p_value``: Bonferroni over both; ``drift`` when a part has both its
    p-value <= alpha / 2 and its distance >= threshold.
    """

    drift: bool
    distance: float | None
    residual_distance: float | None
    centroid_distance: float | None
    threshold: float
    p_value: float | None
    p_value_principal: float | None
    p_value_residual: float | None
    alpha: float

    def to_dict(self):
        return asdict(self)


@dataclass(frozen=True)
class HistogramsResult:
    """The per-component histogram test of one window.

    ``effect``: the largest Jensen-Shannon distance over the components (and
    the residual norm), with ``component`` naming it (``"pc1"`` ... or
    ``"residual"``); ``p_value_adjusted``: the smallest Holm-adjusted
    chi-square p-value; ``drifted``: the components with both effect >=
    threshold and adjusted p <= alpha.
    """

    drift: bool
    effect: float | None
    component: str | None
    threshold: float
    p_value_adjusted: float | None
    alpha: float
    drifted: tuple

    def to_dict(self):
        d = asdict(self)
        d["drifted"] = list(self.drifted)
        return d


@dataclass(frozen=True)
class EmbeddingResult:
    """One window's verdict for one embedding feature."""

    status: str
    drift: bool
    events: int
    missing: int
    dimension: int
    components: int
    mean_distance: MeanDistanceResult | None
    histograms: HistogramsResult | None

    def to_dict(self):
        d = asdict(self)
        if self.histograms is not None:
            d["histograms"] = self.histograms.to_dict()
        return d


class EmbeddingDrift:
    """Drift of an embedding feature by its mean vector and its principal-component histograms.

    Parameters
    ----------
    model : dict
        The artefact of :meth:`fit_baseline`.
    methods : sequence of {"mean_distance", "histograms"}
        Which tests decide; a window drifts when any of them does.
    alpha : float
        False-alarm rate per window of each method.
    mean_threshold : float
        Minimum whitened mean distance (baseline stds) for a mean drift; 0.1 by
        default, as the numeric features' Wasserstein threshold.
    histogram_threshold : float
        Minimum Jensen-Shannon distance of a component's histogram; 0.05 by
        default, as for categorical features.
    min_events : int
        Windows with fewer non-missing vectors report ``insufficient_data``.

    Notes
    -----
    **Fit.** On the baseline vectors: the mean ``mu``, the eigendecomposition
    of the covariance, the top ``components`` eigenvectors ``U`` with their
    eigenvalues ``lam``; a vector's projection is ``z = (x - mu) @ U / sqrt(lam)``
    (unit variance, uncorrelated under the baseline) and its residual norm
    ``|x - mu - (x - mu) @ U @ U.T|``. Bin edges are the baseline quantiles of
    each projection and of the residual norm (``bins`` bins).

    **Mean distance.** The shift of the mean vector ``d = mean(x) - mu`` is
    split into its part in the principal subspace and the rest. Over a window
    of ``n`` vectors against ``m`` baseline ones, with
    ``n_eff = n m / (n + m)``: ``n_eff * |mean(z)|**2`` is chi-square with
    ``components`` degrees of freedom under no drift (Hotelling's two-sample
    statistic with the baseline covariance, which ``m`` in the tens of
    thousands pins down); ``n_eff * |d_residual|**2`` is a weighted sum of
    one-degree chi-squares with the residual eigenvalues as weights, whose
    tail :func:`weighted_chi2_sf` computes by Imhof's method (Satterthwaite's
    scaled chi-square, matching two moments, doubled the false alarms at
    alpha = 0.005 when a few residual eigenvalues dominate). Each part is
    tested at ``alpha / 2`` (Bonferroni), and drifts when its distance also
    reaches ``mean_threshold``. The residual part costs nothing per row: it
    comes from the window's sum of raw vectors when the window closes.

    **Histograms.** Per component, the chi-square test of homogeneity of the
    baseline's and the window's bin counts (the baseline is a sample too),
    Holm-corrected over the ``components + 1`` histograms; drift when one
    component has both JS distance >= ``histogram_threshold`` and adjusted
    p <= ``alpha``.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> basis = rng.normal(size=(4, 32))
    >>> def draw(n, shift=0.0):
    ...     z = rng.normal(size=(n, 4)); z[:, 0] += shift
    ...     return z @ basis + 0.1 * rng.normal(size=(n, 32))
    >>> model = EmbeddingDrift.fit_baseline(draw(20_000), components=4)
    >>> EmbeddingDrift(model).update(draw(5_000)).result().drift
    False
    >>> r = EmbeddingDrift(model).update(draw(5_000, shift=0.3)).result()
    >>> r.drift, r.mean_distance.drift, round(r.mean_distance.distance, 1)
    (True, True, 0.3)
    """

    def __init__(self, model, methods=METHODS, alpha=0.01, mean_threshold=0.1, histogram_threshold=0.05,
                 min_events=100):
        methods = tuple(methods)
        if not methods or any(m not in METHODS for m in methods) or len(set(methods)) != len(methods):
            raise ValueError(f"methods must be distinct names from {METHODS}, got {methods!r}")
        _check("alpha", alpha, 0, 1, open_low=True, open_high=True)
        _check("mean_threshold", mean_threshold, 0, float("inf"), open_high=True)
        _check("histogram_threshold", histogram_threshold, 0, 1)
        _check("min_events", min_events, 1, float("inf"), integer=True)
        self.model = model
        self.methods = methods
        self.alpha = float(alpha)
        self.mean_threshold = float(mean_threshold)
        self.histogram_threshold = float(histogram_threshold)
        self.min_events = int(min_events)
        self.dimension = int(model["dimension"])
        self._mu = np.array(model["mean"], dtype=float)
        self._basis = np.array(model["basis"], dtype=float).reshape(self.dimension, -1)
        self.components = self._basis.shape[1]
        self._scales = np.array(model["scales"], dtype=float)
        # whitening folded into the projection: one product per batch
        self._whiten = self._basis / self._scales
        # centring folded in too: (x - mu) @ W = x @ W - mu @ W, |x - mu|^2 = |x|^2 - 2 x.mu + |mu|^2 (no copy of x)
        self._mu_whitened = self._mu @ self._whiten
        self._mu_sq = float(self._mu @ self._mu)
        self._residual_eigenvalues = np.array(model["residual_eigenvalues"], dtype=float)
        self._edges = [np.array(e, dtype=float) for e in model["edges"]]
        self._base_counts = [np.array(c, dtype=np.int64) for c in model["counts"]]
        self._has_residual = self.dimension > self.components
        if len(self._edges) != self.components + self._has_residual or self._scales.shape != (self.components,):
            raise ValueError("model: one set of edges per component (plus the residual), one scale per component")
        self._offsets = np.concatenate([[0], np.cumsum([e.size + 1 for e in self._edges])]).astype(int)
        self._reset()

    def _reset(self):
        self._n = 0
        self._missing = 0
        self._sum_z = np.zeros(self.components)
        self._sum_x = np.zeros(self.dimension)
        self._counts = np.zeros(int(self._offsets[-1]), dtype=np.int64)

    @staticmethod
    def fit_baseline(vectors, components=10, bins=20, max_rows=100_000, seed=0):
        """Fit on baseline ``vectors`` (an ``(m, dimension)`` array; rows with NaN are skipped).

        Returns a JSON-safe artefact for the constructor.
        """
        x = np.asarray(vectors, dtype=float)
        if x.ndim != 2:
            raise ValueError(f"vectors must be a 2-D array (rows, dimension), got shape {x.shape}")
        _check("components", components, 1, x.shape[1], integer=True)
        _check("bins", bins, 2, 1000, integer=True)
        x = x[np.isfinite(x).all(axis=1)]
        if x.shape[0] > max_rows:
            x = x[np.sort(np.random.default_rng(seed).permutation(x.shape[0])[:max_rows])]
        if x.shape[0] < max(100, 2 * components):
            raise ValueError(f"an embedding baseline needs at least {max(100, 2 * components)} complete vectors, "
                             f"got {x.shape[0]}")
        mu = x.mean(axis=0)
        centered = x - mu
        cov = centered.T @ centered / x.shape[0]
        eigval, eigvec = np.linalg.eigh(cov)
        eigval, eigvec = eigval[::-1], eigvec[:, ::-1]
        if eigval[components - 1] <= 1e-12 * max(eigval[0], 1e-300):
            raise ValueError(f"the baseline vectors span fewer than {components} dimensions; use fewer components")
        basis, scales = eigvec[:, :components], np.sqrt(eigval[:components])
        proj = _project(centered, basis / scales, scales)
        if components == x.shape[1]:
            proj = proj[:, :-1]  # nothing outside the components: no residual histogram
        qs = np.arange(1, bins) / bins
        edges, counts = [], []
        for col in proj.T:
            e = np.unique(np.quantile(col, qs, method="inverted_cdf"))
            edges.append(e.tolist())
            counts.append(np.bincount(np.searchsorted(e, col, side="left"), minlength=e.size + 1).tolist())
        rest = np.clip(eigval[components:], 0.0, None)
        return {"method": "embedding", "dimension": int(x.shape[1]), "mean": mu.tolist(), "basis": basis.tolist(),
                "scales": scales.tolist(), "explained_variance": float(eigval[:components].sum() / eigval.sum()),
                "total_variance": float(eigval.sum()), "residual_eigenvalues": rest.tolist(), "n": int(x.shape[0]),
                "edges": edges, "counts": counts}

    def update(self, vectors):
        """Add one batch: an ``(n, dimension)`` float array (NaN anywhere in a row = missing). Returns self."""
        x = np.asarray(vectors, dtype=float)
        if x.ndim != 2 or x.shape[1] != self.dimension:
            raise ValueError(f"expected an (n, {self.dimension}) array, got shape {x.shape}")
        ok = np.isfinite(x).all(axis=1)
        if not ok.all():
            self._missing += int(x.shape[0] - ok.sum())
            x = x[ok]
        if x.shape[0] == 0:
            return self
        with single_threaded_blas():
            self._sum_x += x.sum(axis=0)
            proj = _project(x, self._whiten, self._scales, self._mu, self._mu_whitened, self._mu_sq)
        self._sum_z += proj[:, :self.components].sum(axis=0)
        for j, edges in enumerate(self._edges):
            idx = np.searchsorted(edges, proj[:, j], side="left") + self._offsets[j]
            self._counts += np.bincount(idx, minlength=self._counts.size)
        self._n += x.shape[0]
        return self

    def merge(self, other):
        """Add another partial window of the same model (exact). Returns self."""
        if other.model is not self.model and other.model != self.model:
            raise ValueError("can only merge detectors of the same baseline model")
        self._n += other._n
        self._missing += other._missing
        self._sum_z += other._sum_z
        self._sum_x += other._sum_x
        self._counts += other._counts
        return self

    @property
    def n(self):
        """Non-missing vectors."""
        return self._n

    def result(self):
        """The window's :class:`EmbeddingResult`."""
        base = dict(events=self._n + self._missing, missing=self._missing, dimension=self.dimension,
                    components=self.components)
        if self._n < self.min_events:
            return EmbeddingResult(status="insufficient_data", drift=False, mean_distance=None, histograms=None,
                                   **base)
        mean = hist = None
        if "mean_distance" in self.methods:
            mean = self._mean_distance()
        if "histograms" in self.methods:
            hist = self._histograms()
        drift = bool((mean is not None and mean.drift) or (hist is not None and hist.drift))
        return EmbeddingResult(status="ok", drift=drift, mean_distance=mean, histograms=hist, **base)

    def _mean_distance(self):
        model, n = self.model, self._n
        n_eff = n * model["n"] / (n + model["n"])
        zbar = self._sum_z / n
        distance = float(np.sqrt(zbar @ zbar))
        p_principal = float(sps.chi2.sf(n_eff * distance ** 2, self.components))
        shift = self._sum_x / n - self._mu
        kept = shift @ self._basis
        residual_sq = max(float(shift @ shift - kept @ kept), 0.0)
        var = float(self._residual_eigenvalues.sum())
        rest_dims = self.dimension - self.components
        if rest_dims and var > 0:
            p_residual = weighted_chi2_sf(n_eff * residual_sq, self._residual_eigenvalues)
            residual_distance = float(np.sqrt(max(residual_sq - var / n_eff, 0.0) / (var / rest_dims)))
        else:
            p_residual, residual_distance = 1.0, 0.0
        half = self.alpha / 2
        drift = bool((p_principal <= half and distance >= self.mean_threshold)
                     or (p_residual <= half and residual_distance >= self.mean_threshold))
        centroid = float(np.sqrt(shift @ shift) / np.sqrt(model["total_variance"]))
        return MeanDistanceResult(drift=drift, distance=distance, residual_distance=residual_distance,
                                  centroid_distance=centroid, threshold=self.mean_threshold,
                                  p_value=min(1.0, 2 * min(p_principal, p_residual)), p_value_principal=p_principal,
                                  p_value_residual=p_residual, alpha=self.alpha)

    def _histograms(self):
        names = [f"pc{i + 1}" for i in range(self.components)] + ["residual"] * self._has_residual
        effects, pvalues = [], []
        for j, base in enumerate(self._base_counts):
            q = self._counts[self._offsets[j]:self._offsets[j + 1]]
            effects.append(js_distance(base, q))
            pvalues.append(chi2_homogeneity(base, q)[2])
        adjusted = holm(pvalues)
        drifted = tuple(name for name, e, p in zip(names, effects, adjusted)
                        if e >= self.histogram_threshold and p <= self.alpha)
        worst = int(np.argmax(effects))
        return HistogramsResult(drift=bool(drifted), effect=float(effects[worst]), component=names[worst],
                                threshold=self.histogram_threshold, p_value_adjusted=float(np.min(adjusted)),
                                alpha=self.alpha, drifted=drifted)

    def state_dict(self):
        return {"n": self._n, "missing": self._missing, "sum_z": self._sum_z.tolist(), "sum_x": self._sum_x.tolist(),
                "counts": self._counts.tolist()}

    def load_state_dict(self, d):
        sum_z, sum_x = np.array(d["sum_z"], dtype=float), np.array(d["sum_x"], dtype=float)
        counts = np.array(d["counts"], dtype=np.int64)
        if sum_z.shape != self._sum_z.shape or sum_x.shape != self._sum_x.shape or counts.shape != self._counts.shape:
            raise ValueError("state was saved for a different embedding model")
        self._n, self._missing = int(d["n"]), int(d["missing"])
        self._sum_z, self._sum_x, self._counts = sum_z, sum_x, counts
        return self

    def __repr__(self):
        return f"EmbeddingDrift(dimension={self.dimension}, components={self.components}, n={self._n})"


def _project(x, whiten, scales, mu=None, mu_whitened=None, mu_sq=0.0):
    """``(n, k + 1)``: whitened projections of ``x - mu``, then the norm of the residual."""
    z = x @ whiten
    sq = np.einsum("ij,ij->i", x, x)
    if mu is not None:
        z -= mu_whitened
        sq += mu_sq - 2.0 * (x @ mu)
    kept = z * scales  # projections in the data's units
    residual = sq - np.einsum("ij,ij->i", kept, kept)
    return np.column_stack([z, np.sqrt(np.maximum(residual, 0.0))])


def weighted_chi2_sf(x, weights):
    """``P(sum_j w_j * X_j > x)`` for independent one-degree chi-squares ``X_j`` (Imhof, 1961).

    Numerical inversion of the characteristic function; accurate to about
    1e-7 absolute (smaller p-values read as about 0) and fast (milliseconds)
    for tens to hundreds of weights. With only one or two weights the
    integrand decays slowly and the error grows to about 0.002.

    Examples
    --------
    >>> round(weighted_chi2_sf(11.07, [1.0] * 5), 4), round(float(sps.chi2.sf(11.07, 5)), 4)
    (0.05, 0.05)
    """
    w = np.asarray(weights, dtype=float)
    w = w[w > 0]
    if w.size == 0:
        return 1.0 if x >= 0 else 0.0
    scale = w.max()
    w, x = w / scale, float(x) / scale

    def integrand(u):
        theta = 0.5 * np.arctan(w * u).sum() - 0.5 * x * u
        return np.sin(theta) * np.exp(-0.25 * np.log1p((w * u) ** 2).sum()) / u

    value, _ = integrate.quad(integrand, 0.0, np.inf, limit=500)
    return float(min(max(0.5 + value / np.pi, 0.0), 1.0))
