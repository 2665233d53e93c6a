"""Seeded synthetic prediction logs: the demo's data, and the tests' and benchmarks' workload.

Two schemas: ``car_loan`` (8 readable features, for the demo) and ``wide`` (25
features, about 700-byte messages, for benchmarks and error-rate tests). Both
can drift part-way through a stream.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone

import numpy as np

from monitor.values import iso

__all__ = ["Synth", "car_loan", "wide"]


class _Spec:
    def __init__(self, name, type_, draw, drift=None, path=None, feature=True):
        self.name = name
        self.type = type_
        self.draw = draw  # (rng, n) -> values
        self.drift = drift  # (rng, n) -> values after the change point, or None
        self.path = path
        self.feature = feature  # False: a field the messages carry (a segment) that is not monitored


def _cat(levels, shares):
    levels, shares = list(levels), np.asarray(shares, dtype=float)
    return lambda rng, n: rng.choice(levels, size=n, p=shares / shares.sum())


class Synth:
    """A seeded generator of training rows and prediction-log messages for a schema.

    Parameters
    ----------
    specs : list of _Spec
    seed : int
    """

    def __init__(self, specs, seed: int = 0):
        self.specs = specs
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        # Fixed standardization, so a drifted input moves the score (per-batch scaling would hide it).
        ref_rng = np.random.default_rng(seed + 1)
        self._scale = {s.name: (float(np.mean(v)), float(np.std(v)) + 1e-9)
                       for s in specs if s.type == "numeric" and s.feature
                       for v in [s.draw(ref_rng, 5000).astype(float)]}

    @property
    def drifting(self) -> list[str]:
        return [s.name for s in self.specs if s.drift is not None]

    def columns(self, n: int, drifted: bool = False) -> dict[str, np.ndarray]:
        cols = {}
        for s in self.specs:
            draw = s.drift if (drifted and s.drift is not None) else s.draw
            cols[s.name] = draw(self._rng, n)
        score = self._score(cols)
        cols["y_pred_proba"] = np.round(score, 6)
        cols["y_pred"] = (score >= 0.5).astype(np.int64)
        cols["repaid"] = (self._rng.random(n) < score).astype(np.int64)
        return cols

    def _score(self, cols) -> np.ndarray:
        z = np.zeros(len(next(iter(cols.values()))))
        for s in self.specs:
            if s.name in self._scale:
                mean, std = self._scale[s.name]
                z += 0.6 * (cols[s.name].astype(float) - mean) / std / np.sqrt(len(self._scale))
        return 1.0 / (1.0 + np.exp(-(z + 0.3)))

    def training_table(self, n: int):
        import pyarrow as pa

        return pa.table({k: v.tolist() if v.dtype.kind in "OU" else v for k, v in self.columns(n).items()})

    def messages(self, n: int, drift_at: int | None = None, start_time: float | None = None,
                 rate: float = 1000.0, id_prefix: str = "req") -> list[bytes]:
        """``n`` JSON messages; those from index ``drift_at`` on come from the drifted distributions."""
        start_time = datetime.now(timezone.utc).timestamp() if start_time is None else start_time
        cut = n if drift_at is None else max(0, min(n, drift_at))
        parts = [self.columns(cut, False)] if cut else []
        if cut < n:
            parts.append(self.columns(n - cut, True))
        cols = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        out = []
        by_path = [(s.path or s.name, s.name) for s in self.specs] + [
            ("y_pred", "y_pred"), ("y_pred_proba", "y_pred_proba"), ("repaid", "repaid")]
        pylists = {k: v.tolist() for k, v in cols.items()}
        for i in range(n):
            msg: dict = {"id": f"{id_prefix}-{i:09d}",
                         "timestamp": iso(start_time + i / rate), "model_version": "2026.11.1"}
            for path, name in by_path:
                parts_ = path.split(".")
                target = msg
                for p in parts_[:-1]:
                    target = target.setdefault(p, {})
                target[parts_[-1]] = pylists[name][i]
            out.append(json.dumps(msg, separators=(",", ":")).encode())
        return out

    def config(self, model: str = "car-loan", **overrides) -> dict:
        """A driftmon config tree for this schema (merge ``overrides`` into the top level)."""
        cfg = {
            "model": model,
            "schema": {
                "id": {"path": "id"},
                "timestamp": {"path": "timestamp"},
                "features": [{"name": s.name, "type": s.type, **({"path": s.path} if s.path else {})}
                             for s in self.specs if s.feature],
                "prediction": {"name": "y_pred", "type": "categorical"},
                "score": {"name": "y_pred_proba", "type": "numeric"},
            },
            "baseline": "baseline.json",
            "window": {"size": 5000},
        }
        cfg.update(overrides)
        return cfg


def car_loan(seed: int = 0) -> Synth:
    """Eight features of a car-loan model (car_value, salary_range and the debt ratio drift), plus the
    sales `channel` each request came through (not a feature: a segment)."""
    salary = ["<30k", "30-60k", "60-100k", ">100k"]
    specs = [
        _Spec("car_value", "numeric", lambda r, n: np.round(r.lognormal(10.0, 0.4, n), 2),
              lambda r, n: np.round(r.lognormal(10.0, 0.4, n) * 1.3, 2)),
        _Spec("salary_range", "categorical", _cat(salary, [0.25, 0.40, 0.25, 0.10]),
              _cat(salary, [0.40, 0.30, 0.20, 0.10])),
        _Spec("debt_to_income_ratio", "numeric", lambda r, n: np.round(r.beta(2, 5, n), 4),
              lambda r, n: np.round(r.beta(3, 4, n), 4), path="inputs.dti"),
        _Spec("age", "numeric", lambda r, n: np.clip(np.round(r.normal(41, 12, n)), 18, 90)),
        _Spec("credit_score", "numeric", lambda r, n: np.round(r.normal(690, 55, n))),
        _Spec("region", "categorical", _cat(["north", "south", "east", "west", "central"], [3, 2, 2, 2, 1])),
        _Spec("loan_term_months", "categorical", _cat(["12", "24", "36", "48", "60"], [1, 2, 4, 2, 1])),
        _Spec("prior_loans", "numeric", lambda r, n: r.poisson(1.5, n).astype(float)),
        _Spec("channel", "categorical", _cat(["web", "branch", "partner"], [5, 3, 2]), feature=False),
    ]
    return Synth(specs, seed)


def wide(seed: int = 0, drift: bool = False) -> Synth:
    """25 features (18 numeric, 7 categorical) under ``inputs``: about 700-byte messages."""
    numeric = [
        lambda r, n: np.round(r.normal(50, 10, n), 6),
        lambda r, n: np.round(r.lognormal(3, 0.5, n), 6),
        lambda r, n: np.round(r.exponential(2.0, n), 6),
        lambda r, n: np.round(r.uniform(0, 1000, n), 6),
        lambda r, n: r.poisson(3, n).astype(float),
        lambda r, n: np.round(r.gamma(2, 2, n), 6),
    ]
    specs = []
    for j in range(18):
        draw = numeric[j % len(numeric)]
        shift = (lambda d: (lambda r, n: d(r, n) + 2.5))(draw) if (drift and j == 0) else None
        specs.append(_Spec(f"num_{j}", "numeric", draw, shift, path=f"inputs.num_{j}"))
    for j in range(7):
        levels = [f"level_{k}" for k in range(3 + 4 * j)]
        shares = np.linspace(2, 1, len(levels))
        specs.append(_Spec(f"cat_{j}", "categorical", _cat(levels, shares), None, path=f"inputs.cat_{j}"))
    return Synth(specs, seed)
