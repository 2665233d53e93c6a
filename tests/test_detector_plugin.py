"""A detector added in one registry entry gets its metrics and its alerts with no edit to monitor/.

The example below is a whole new multivariate method (a mean-shift z-test of one feature against the
baseline). It is registered by this test alone; the collector exports its samples in the
``multivariate_drift_*`` families, and the alert engine fires, words and resolves its ``multivariate_drift``
alert, from what its entry declares (docs/DESIGN.md "Worked example: a new detector").
"""

import math
from dataclasses import dataclass
from types import SimpleNamespace

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from scipy.stats import norm

from monitor.alerting import AlertEngine
from monitor.baseline import Baseline
from monitor.metrics import DETECTOR_FAMILIES, DriftmonCollector, make_registry
from monitor.pipeline import Pipeline
from monitor.registry import REGISTRY, Entry, Finding, Sample
from monitor.synth import car_loan
from tests.helpers import write_setup

WINDOW = 2000
COLUMN = "car_value"  # drifts in car_loan's drifted rows
THRESHOLD = 0.2  # the shift, in baseline stds, that counts as material


@dataclass(frozen=True)
class MeanShiftResult:
    shift: float | None
    p_value: float | None
    n: int
    drift: bool

    def sections(self) -> dict:
        return {"mean_shift": {"status": "ok" if self.n else "empty", "effect": self.shift, "p_value": self.p_value,
                               "threshold": THRESHOLD, "events": self.n, "drift": self.drift}}


class MeanShift:
    """The window mean of one numeric column vs the baseline's, in baseline stds (a z-test)."""

    key = "mean_shift"

    def __init__(self, column: str, mean: float, std: float):
        self.column, self.mean, self.std = column, mean, std
        self._reset()

    def _reset(self):
        self.n, self.total = 0, 0.0

    def fresh(self):
        return MeanShift(self.column, self.mean, self.std)

    def update(self, batch):
        x = batch.columns[self.column]
        x = x[x == x]  # NaN is missing
        self.n += int(x.size)
        self.total += float(x.sum())
        return self

    def merge(self, other):
        self.n += other.n
        self.total += other.total
        return self

    def result(self, context):
        if self.n == 0:
            return MeanShiftResult(None, None, 0, False)
        shift = (self.total / self.n - self.mean) / self.std
        p = float(2 * norm.sf(abs(shift) * math.sqrt(self.n)))
        return MeanShiftResult(shift, p, self.n, bool(p <= context.alpha and abs(shift) >= THRESHOLD))

    def state_dict(self):
        return {"n": self.n, "total": self.total}

    def load_state_dict(self, state):
        self.n, self.total = state["n"], state["total"]
        return self


def _build(config, baseline, background):
    profile = baseline.profiles[COLUMN]
    return MeanShift(COLUMN, profile.mean, profile.std)


def _metrics(detector, result):
    r = (result or {}).get("mean_shift") or {}
    yield Sample("multivariate_drift_detected", ("mean_shift",), 1 if r.get("drift") else 0)
    yield Sample("multivariate_drift_score", ("mean_shift",), r.get("effect"))
    yield Sample("multivariate_drift_p_value", ("mean_shift",), r.get("p_value"))


def _evidence(config, result):
    r = result.get("mean_shift")
    if r and r["status"] == "ok":
        yield Finding("multivariate_drift", "mean_shift", r["drift"], abs(r["effect"]) / r["threshold"], {
            "method": "mean_shift", "score": r["effect"], "threshold": r["threshold"], "p_value": r["p_value"],
            "window": result["window"]["index"], "events": r["events"]})


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    # No multivariate section: the example's metrics and alerts do not lean on the built-in methods.
    _path, config = write_setup(tmp_path_factory.mktemp("plugin"), car_loan(seed=3), window={"size": WINDOW})
    return config, Baseline.load(config.baseline)


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setitem(REGISTRY, "mean_shift", Entry(_build, metrics=_metrics, evidence=_evidence))


def scrape(pipeline, baseline) -> dict:
    service = SimpleNamespace(model=pipeline.config.model, version="test", baseline=baseline, pipeline=pipeline,
                              lag={}, checkpoints=0, last_window_end=None)
    registry, _ = make_registry(service.model, DriftmonCollector(service))
    families = text_string_to_metric_families(generate_latest(registry).decode())
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}


def windows(pipeline, drift: bool, n: int, seed: int) -> list[dict]:
    msgs = car_loan(seed=seed).messages(n * WINDOW, drift_at=0 if drift else None, start_time=1.7e9)
    results, _ = pipeline.process(msgs)
    return results


def test_a_registered_detector_gets_metrics_and_alerts(setup, registered):
    config, baseline = setup
    p = Pipeline(config, baseline)
    key = ("driftmon_multivariate_drift_detected", (("method", "mean_shift"), ("model", config.model)))
    score_key = ("driftmon_multivariate_drift_score", (("method", "mean_shift"), ("model", config.model)))
    before = scrape(p, baseline)
    assert before[key] == 0 and score_key not in before  # configured: a zero, and no score before a window

    engine = AlertEngine(config, baseline.fingerprint)
    clean = windows(p, False, 2, seed=7)
    assert [r["mean_shift"]["drift"] for r in clean] == [False, False]
    assert all(not engine.observe(r) for r in clean)
    assert scrape(p, baseline)[key] == 0

    notes = []
    drifted = windows(p, True, config.alerts.fire_after, seed=8)
    for r in drifted:
        notes += [n for n in engine.observe(r) if n["alert"] == "multivariate_drift"]
    last = drifted[-1]["mean_shift"]
    assert last["drift"] and abs(last["effect"]) >= THRESHOLD
    samples = scrape(p, baseline)
    assert samples[key] == 1
    assert samples[score_key] == pytest.approx(last["effect"])
    assert samples[("driftmon_multivariate_drift_p_value", score_key[1])] == pytest.approx(last["p_value"])
    assert not any(name.startswith("driftmon_multivariate_evaluations") for name, _ in samples)  # not declared

    (note,) = notes
    assert note["status"] == "firing" and note["subject"] == "mean_shift"
    assert note["dedup_key"] == f"{config.model}/multivariate_drift/mean_shift"
    assert note["multivariate"]["score"] == pytest.approx(last["effect"])
    assert note["runbook_url"].endswith("#driftmonmultivariatedrift")
    assert note["summary"].startswith(f"{config.model}: multivariate drift by mean_shift (")
    assert engine.firing()["multivariate_drift"] == 1

    resolved = []
    for r in windows(p, False, config.alerts.resolve_after, seed=9):
        resolved += [n for n in engine.observe(r) if n["alert"] == "multivariate_drift"]
    assert [n["status"] for n in resolved] == ["resolved"]
    assert scrape(p, baseline)[key] == 0


def test_detector_families_are_documented_metrics():
    from monitor.metrics import NAMES

    for family, labels in DETECTOR_FAMILIES.items():
        assert family in NAMES and isinstance(labels, tuple) and all(isinstance(label, str) for label in labels)


def test_an_undeclared_family_is_refused(setup, monkeypatch):
    config, baseline = setup
    monkeypatch.setitem(REGISTRY, "mean_shift", Entry(_build, metrics=lambda d, r: [Sample("mean_shift_rate", (), 1)]))
    with pytest.raises(ValueError, match="mean_shift_rate"):
        scrape(Pipeline(config, baseline), baseline)


def test_ported_detectors_export_their_series_from_the_registry(tmp_path):
    """Estimated performance and segment drift declare their series in their entries: the values are the result's."""
    _path, config = write_setup(tmp_path, car_loan(seed=3), schema={"label": {"name": "repaid", "type": "categorical"}},
                                window={"size": WINDOW}, segments=[{"name": "channel", "path": "channel"}])
    baseline = Baseline.load(config.baseline)
    p = Pipeline(config, baseline)
    assert not any(name in ("driftmon_estimated_performance", "driftmon_segment_features_drifted")
                   for name, _ in scrape(p, baseline))  # no window judged yet: no series
    (result,) = windows(p, True, 1, seed=4)
    samples = scrape(p, baseline)
    model = ("model", config.model)
    estimated = {dict(labels)["metric"]: v for (name, labels), v in samples.items()
                 if name == "driftmon_estimated_performance"}
    assert estimated and estimated == pytest.approx({k: v for k, v in result["estimated_performance"].items()
                                                     if k in ("accuracy", "precision", "recall", "f1")})
    segments = {labels: v for (name, labels), v in samples.items() if name == "driftmon_segment_features_drifted"}
    assert segments == {(model, ("segment", f"channel={value}")): len(s["drifted"])
                        for value, s in result["segments"]["channel"].items()}
    assert sum(segments.values()) > 0  # the drifted rows drift within segments too
