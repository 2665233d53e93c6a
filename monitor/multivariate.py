"""Multivariate and embedding drift in the service: baseline artefacts, per-window state, off-thread classifier.

The statistics live in :mod:`detectors.multivariate` and :mod:`detectors.embedding`; this module builds
them from the config and the baseline's artefacts (``extras["multivariate"]``, ``extras["embeddings"]``),
feeds them every batch of a window, and turns their typed results into the window result's
``"multivariate"`` and ``"embeddings"`` sections. The domain classifier fits a model per evaluation, so
the daemon runs it on a worker thread, one at a time and at most once per ``multivariate.min_interval``;
a window result then carries the latest finished evaluation (``"window"`` says which window it judged,
``"fresh"`` whether this is the first result to carry it: alerts count each evaluation once).
``driftmon replay`` evaluates every window inline, so its output is reproducible.
"""

from __future__ import annotations

import os
import threading
import time

import numpy as np

from detectors.embedding import EmbeddingDrift
from detectors.multivariate import DomainClassifier, PCAReconstruction
from monitor.config import Config, ConfigError

__all__ = ["ClassifierRunner", "MultivariateState", "check_artefacts", "fit_artefacts"]


def fit_artefacts(config: Config, column, vectors, seed: int = 0) -> dict:
    """Baseline extras for the configured methods and embedding features.

    ``column(spec)`` returns a training column (numpy floats or a list of categories); ``vectors(spec)``
    an ``(n, dimension)`` array of an embedding feature (NaN rows where absent).
    """
    extras: dict = {}
    mv = config.multivariate
    if mv is not None:
        features = config.multivariate_features()
        columns = {f.name: column(f) for f in features}
        kinds = {f.name: f.type for f in features}
        extras["multivariate"] = {}
        if "pca_reconstruction" in mv.methods:
            extras["multivariate"]["pca_reconstruction"] = PCAReconstruction.fit_baseline(
                columns, kinds, variance=mv.variance, seed=seed)
        if "domain_classifier" in mv.methods:
            extras["multivariate"]["domain_classifier"] = DomainClassifier.fit_baseline(
                columns, kinds, sample_size=mv.sample_size, seed=seed)
    embeddings = config.schema.embeddings()
    if embeddings:
        extras["embeddings"] = {}
        for spec in embeddings:
            x = vectors(spec)
            if x.ndim != 2 or x.shape[1] != spec.dimension:
                raise ValueError(f"embedding feature {spec.name!r}: expected vectors of length {spec.dimension}")
            extras["embeddings"][spec.name] = EmbeddingDrift.fit_baseline(x, components=spec.components, seed=seed)
    return extras


def check_artefacts(config: Config, extras: dict, path: str) -> None:
    """Raise ConfigError when the baseline lacks (or has stale) artefacts the config needs."""
    mv = config.multivariate
    if mv is not None:
        names = [f.name for f in config.multivariate_features()]
        for method in mv.methods:
            model = extras.get("multivariate", {}).get(method)
            if model is None:
                raise ConfigError("multivariate.methods", f"{method} is not in the baseline {path}; rebuild it")
            if model["encoder"]["names"] != names:
                raise ConfigError("multivariate.features", f"the baseline's {method} was fitted on other features "
                                                           f"({model['encoder']['names']}); rebuild it")
    for spec in config.schema.embeddings():
        model = extras.get("embeddings", {}).get(spec.name)
        if model is None:
            raise ConfigError("schema.features", f"embedding {spec.name!r} is not in the baseline {path}; rebuild it")
        if model["dimension"] != spec.dimension or len(model["scales"]) != spec.components:
            raise ConfigError("schema.features", f"embedding {spec.name!r}: the baseline has dimension "
                                                 f"{model['dimension']} and {len(model['scales'])} components; rebuild it")


class ClassifierRunner:
    """Runs domain-classifier evaluations inline (replay) or on one worker thread (daemon), rate-limited.

    Parameters
    ----------
    background : bool
        False: :meth:`evaluate` fits at once and returns the window's own result. True: it hands a copy
        of the window's sample to a worker thread when none is running and ``min_interval`` has passed
        since the last start, and returns the latest finished result.
    """

    def __init__(self, background: bool = False, min_interval: float = 60.0, clock=time.monotonic):
        self.background = background
        self.min_interval = float(min_interval)
        self.clock = clock
        self._lock = threading.Lock()
        self._busy = False
        self._last_start: float | None = None
        self._latest: dict | None = None
        self._reported = True  # whether the latest result was already in a window result
        self.evaluations = 0
        self.skipped = 0

    def _run(self, detector: DomainClassifier, index: int) -> dict:
        started = time.perf_counter()
        out = detector.result().to_dict()
        out.update(window=index, seconds=round(time.perf_counter() - started, 4))
        return out

    def evaluate(self, detector: DomainClassifier, index: int) -> dict:
        """The classifier section of window ``index``'s result."""
        if not self.background:
            self.evaluations += 1
            return {**self._run(detector, index), "fresh": True}
        now = self.clock()
        with self._lock:
            start = not self._busy and (self._last_start is None or now - self._last_start >= self.min_interval)
            if start:
                self._busy, self._last_start = True, now
            else:
                self.skipped += 1
            latest, fresh = self._latest, not self._reported
            self._reported = True
        if start:
            threading.Thread(target=self._work, args=(detector, index), name="driftmon-classifier",
                             daemon=True).start()
        if latest is None:
            return {"status": "pending", "drift": False, "window": None, "fresh": False}
        # "fresh": first reported here (alerts count each evaluation once)
        return {**latest, "fresh": fresh}

    def _work(self, detector: DomainClassifier, index: int) -> None:
        try:  # the lowest CPU priority for this thread only (Linux): the consuming thread comes first
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        except (AttributeError, OSError):
            pass
        try:
            result = self._run(detector, index)
        except Exception as exc:  # a failed fit must not kill the daemon; the next window tries again
            result = {"status": "error", "drift": False, "window": index, "error": f"{type(exc).__name__}: {exc}"}
        with self._lock:
            self._latest, self._busy, self._reported = result, False, False
            self.evaluations += 1

    def wait(self, timeout: float = 60.0) -> bool:
        """Wait until no evaluation runs (tests, shutdown); True when idle."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not self._busy:
                    return True
            time.sleep(0.01)
        return False


class MultivariateState:
    """The multivariate and embedding detectors of one window (empty when none are configured)."""

    def __init__(self, config: Config, baseline, runner: ClassifierRunner | None = None):
        self.config = config
        self.baseline = baseline
        self.runner = runner or ClassifierRunner()
        self.detectors: dict = {}
        mv = config.multivariate
        alpha = config.drift.alpha if mv is None or mv.alpha is None else mv.alpha
        models = baseline.extras.get("multivariate", {})
        if mv is not None and "pca_reconstruction" in mv.methods:
            self.detectors["pca_reconstruction"] = PCAReconstruction(
                models["pca_reconstruction"], alpha=alpha, threshold=mv.threshold, min_events=config.drift.min_events)
        if mv is not None and "domain_classifier" in mv.methods:
            self.detectors["domain_classifier"] = DomainClassifier(
                models["domain_classifier"], alpha=alpha, threshold=mv.auc_threshold, sample_size=mv.sample_size,
                min_events=config.drift.min_events)
        self.embeddings = {
            spec.name: EmbeddingDrift(baseline.extras["embeddings"][spec.name], methods=spec.methods,
                                      alpha=config.drift.alpha, min_events=config.drift.min_events)
            for spec in config.schema.embeddings()}

    def __bool__(self) -> bool:
        return bool(self.detectors or self.embeddings)

    def fresh(self) -> "MultivariateState":
        return MultivariateState(self.config, self.baseline, self.runner)

    def update(self, columns: dict) -> None:
        for detector in self.detectors.values():
            detector.update(columns)
        for name, detector in self.embeddings.items():
            detector.update(columns[name])

    def results(self, index: int) -> dict:
        """``{"multivariate": {...}, "embeddings": {...}}`` sections of window ``index``'s result."""
        out: dict = {}
        if self.detectors:
            section = out["multivariate"] = {}
            for method, detector in self.detectors.items():
                if method == "domain_classifier" and detector.n >= detector.min_events:
                    # the worker gets its own copy, so the consuming thread never shares state with it
                    section[method] = self.runner.evaluate(detector.copy(), index)
                else:
                    section[method] = detector.result().to_dict()
        if self.embeddings:
            out["embeddings"] = {name: d.result().to_dict() for name, d in self.embeddings.items()}
        return out

    def state_dict(self) -> dict:
        return {"detectors": {k: d.state_dict() for k, d in self.detectors.items()},
                "embeddings": {k: d.state_dict() for k, d in self.embeddings.items()}}

    def load_state_dict(self, state: dict) -> "MultivariateState":
        for key, d in state.get("detectors", {}).items():
            if key in self.detectors:
                self.detectors[key].load_state_dict(d)
        for key, d in state.get("embeddings", {}).items():
            if key in self.embeddings:
                self.embeddings[key].load_state_dict(d)
        return self


def vectors_of(column) -> np.ndarray:
    """An Arrow list column as an ``(n, dimension)`` float array; NaN rows where a vector is absent or short."""
    values = column.to_pylist()
    width = max((len(v) for v in values if v is not None), default=0)
    out = np.full((len(values), width), np.nan)
    for i, v in enumerate(values):
        if v is not None and len(v) == width:
            out[i] = [np.nan if x is None else x for x in v]
    return out


def min_interval_seconds(config: Config) -> float:
    return config.multivariate.min_interval_seconds if config.multivariate else 60.0
