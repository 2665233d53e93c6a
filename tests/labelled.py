"""A seeded labelled-prediction generator with a sensitive group, for performance and fairness tests."""

from __future__ import annotations

import json

import numpy as np


def labelled(n: int, seed: int, degrade_group_b: bool = False, start: float = 1.7e9, rate: float = 1000.0,
             id_prefix: str = "p") -> dict:
    """Columns of n labelled predictions; group B is 10% of traffic. Scores are calibrated: y ~ Bernoulli(score)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 1.0, n)
    group = np.where(rng.random(n) < 0.1, "B", "A")
    score = 1.0 / (1.0 + np.exp(-2.0 * x))
    y = (rng.random(n) < score).astype(int)
    pred = (score >= 0.5).astype(int)
    if degrade_group_b:
        pred[group == "B"] = 0  # the model now rejects everyone in group B
    return {"id": [f"{id_prefix}-{i}" for i in range(n)], "timestamp": (start + np.arange(n) / rate).tolist(),
            "x": np.round(x, 6).tolist(), "group": group.tolist(), "y_pred": pred.tolist(),
            "y_pred_proba": np.round(score, 6).tolist(), "y": y.tolist()}


def messages(cols: dict, with_label: bool = True) -> list[bytes]:
    keys = [k for k in cols if with_label or k != "y"]
    return [json.dumps({k: cols[k][i] for k in keys}, separators=(",", ":")).encode() for i in range(len(cols["id"]))]


def label_messages(cols: dict, delay: float = 30.0) -> list[bytes]:
    return [json.dumps({"id": cols["id"][i], "timestamp": cols["timestamp"][i] + delay, "y": cols["y"][i]}).encode()
            for i in range(len(cols["id"]))]


def config(**overrides) -> dict:
    tree = {
        "model": "lender",
        "schema": {"id": {"path": "id"}, "timestamp": {"path": "timestamp"},
                   "features": [{"name": "x", "type": "numeric"}],
                   "prediction": {"name": "y_pred", "type": "categorical"},
                   "score": {"name": "y_pred_proba"},
                   "label": {"name": "y", "type": "categorical"}},
        "baseline": "baseline.json",
        "window": {"size": 5000},
        "labels": {"window": 5000, "positive": "1"},
        "segments": [{"name": "group"}],
        "fairness": {"attributes": [{"name": "group"}], "favourable": "1"},
    }
    tree.update(overrides)
    return tree
