"""The alert lifecycle on synthetic window results (our own logic: no I/O needed)."""

import json

import pytest

from monitor.alerting import AlertEngine
from monitor.config import parse_config
from monitor.synth import car_loan

FEATURES = ["car_value", "salary_range", "debt_to_income_ratio", "age", "credit_score", "region",
            "loan_term_months", "prior_loans"]


def make_config(**alerts):
    tree = car_loan().config()
    tree["alerts"] = {"repeat_interval": "1h", **alerts}
    tree["schema"]["features"][3]["key"] = True  # age is a key feature
    return parse_config(tree)


def result(index, drifted=None, prediction=None, events=1000, invalid=0, missing=None, status="ok",
           window_seconds=600):
    """A window result in the documented shape; drifted: feature -> effect value (threshold 0.1)."""
    drifted = drifted or {}
    missing = missing or {}
    features = {}
    for name in FEATURES:
        value = drifted.get(name, 0.02)
        features[name] = {
            "type": "numeric", "drift": name in drifted, "status": status, "events": events,
            "missing_ratio": missing.get(name, 0.0), "out_of_range_ratio": 0.0,
            "statistics": {"wasserstein": value},
            "effect": {"method": "wasserstein", "value": value, "threshold": 0.1},
            "test": {"method": "ks", "p_value": 1e-9 if name in drifted else 0.5,
                     "p_value_adjusted": 1e-8 if name in drifted else 1.0, "alpha": 0.01},
        }
    pred_value = prediction if prediction is not None else 0.01
    out = {
        "model": "car-loan", "baseline_fingerprint": "sha256:abc",
        "window": {"index": index, "start": None, "end": f"2026-01-01T{index * window_seconds // 3600:02d}:"
                   f"{index * window_seconds % 3600 // 60:02d}:00.000Z",
                   "events": events, "invalid": invalid, "status": status, "offsets": {"t:0": [index * 1000, index * 1000 + 999]}},
        "drifted": sorted(drifted),
        "features": features,
        "prediction": {"type": "categorical", "drift": prediction is not None, "status": status, "events": events,
                       "statistics": {"jensen_shannon": pred_value},
                       "effect": {"method": "jensen_shannon", "value": pred_value, "threshold": 0.05},
                       "test": {"method": "chi2", "p_value": 0.0, "p_value_adjusted": 0.0, "alpha": 0.01}},
    }
    return out


def run(engine, results):
    return [[(n["alert"], n["subject"], n["status"], n["severity"]) for n in engine.observe(r)] for r in results]


def test_fires_after_two_windows_and_resolves_after_three_clean_ones():
    engine = AlertEngine(make_config(), "sha256:abc")
    steps = run(engine, [result(0, {"car_value": 0.15}), result(1, {"car_value": 0.15}), result(2, {"car_value": 0.15}),
                         result(3), result(4), result(5), result(6)])
    assert steps[0] == []
    assert steps[1] == [("feature_drift", "car_value", "firing", "warning")]
    assert steps[2] == []  # still firing, inside repeat_interval: no duplicate page
    assert steps[3] == steps[4] == []
    assert steps[5] == [("feature_drift", "car_value", "resolved", "warning")]
    assert steps[6] == []
    assert engine.firing()["feature_drift"] == 0


def test_flapping_pages_at_most_once():
    engine = AlertEngine(make_config(), "sha256:abc")
    pattern = [result(i, {"car_value": 0.3} if i % 2 == 0 else None) for i in range(40)]
    sent = [n for step in run(engine, pattern) for n in step]
    assert sent == []  # never two drifted windows in a row
    engine = AlertEngine(make_config(repeat_interval="24h"), "sha256:abc")
    pattern = [result(0, {"car_value": 0.15}), result(1, {"car_value": 0.15})] + \
              [result(i, {"car_value": 0.15} if i % 2 else None) for i in range(2, 40)]
    sent = [n for step in run(engine, pattern) for n in step]
    assert sent == [("feature_drift", "car_value", "firing", "warning")]  # fired once, never resolved in between


def test_repeat_interval_and_escalation():
    engine = AlertEngine(make_config(repeat_interval="1h"), "sha256:abc")
    # windows are 10 minutes apart: a repeat every 6 windows while firing
    steps = run(engine, [result(i, {"car_value": 0.15}) for i in range(14)])
    firing_at = [i for i, s in enumerate(steps) if s]
    assert firing_at == [1, 7, 13]
    # evidence past critical_ratio (2x the threshold) escalates at once
    assert run(engine, [result(14, {"car_value": 0.25})]) == [[("feature_drift", "car_value", "firing", "critical")]]
    assert run(engine, [result(15, {"car_value": 0.25})]) == [[]]


def test_severity_is_critical_from_the_start_when_far_past_threshold():
    engine = AlertEngine(make_config(), "sha256:abc")
    steps = run(engine, [result(0, {"salary_range": 0.5}), result(1, {"salary_range": 0.5})])
    assert steps[1] == [("feature_drift", "salary_range", "firing", "critical")]


def test_thin_windows_neither_fire_nor_resolve():
    engine = AlertEngine(make_config(), "sha256:abc")
    run(engine, [result(0, {"car_value": 0.15}), result(1, {"car_value": 0.15})])
    thin = [result(i, events=20, status="insufficient_data") for i in range(2, 10)]
    assert all(s == [] for s in run(engine, thin))
    assert engine.firing()["feature_drift"] == 1


def test_retrain_on_drift_weight_share_with_evidence_and_idempotency_key():
    engine = AlertEngine(make_config(retrain={"windows": 3, "drift_weight_share": 0.25}), "sha256:abc")
    drift = {"car_value": 0.3, "salary_range": 0.12, "credit_score": 0.11}  # 3 of 8 equal weights = 37.5%
    notes = [engine.observe(result(i, drift)) for i in range(5)]
    retrain = [n for step in notes for n in step if n["alert"] == "retrain_recommended"]
    assert len(retrain) == 1 and notes[2][-1] is retrain[0]  # the third sustained window
    r = retrain[0]
    assert r["status"] == "firing" and r["dedup_key"] == "car-loan/retrain_recommended/model"
    assert [f["name"] for f in r["features"]] == ["car_value", "salary_range", "credit_score"]  # by score
    assert r["evidence"]["drift_weight_share"] == pytest.approx(3 / 8)
    assert [w["index"] for w in r["evidence"]["windows"]][-3:] == [0, 1, 2]
    assert r["evidence"]["windows"][-1]["offsets"] == {"t:0": [2000, 2999]}
    assert r["config_hash"].startswith("sha256:") and r["baseline_fingerprint"] == "sha256:abc"
    # a repeat of the same episode carries the same idempotency key; a new episode another one
    engine2 = AlertEngine(make_config(retrain={"windows": 3, "drift_weight_share": 0.25}, repeat_interval="10m"),
                          "sha256:abc")
    keys = [n["idempotency_key"] for i in range(6) for n in engine2.observe(result(i, drift))
            if n["alert"] == "retrain_recommended"]
    assert len(keys) >= 2 and len(set(keys)) == 1
    for i in range(6, 9):
        engine2.observe(result(i))
    later = [n["idempotency_key"] for i in range(9, 13) for n in engine2.observe(result(i, drift))
             if n["alert"] == "retrain_recommended" and n["status"] == "firing"]
    assert later and later[0] != keys[0]


def test_retrain_on_key_feature_alone_but_not_below_share():
    config = make_config(retrain={"windows": 2, "drift_weight_share": 0.5})
    engine = AlertEngine(config, "sha256:abc")
    notes = [n for i in range(3) for n in engine.observe(result(i, {"car_value": 0.3}))]
    assert not [n for n in notes if n["alert"] == "retrain_recommended"]  # 1/8 of the weight, not a key feature
    engine = AlertEngine(config, "sha256:abc")
    notes = [n for i in range(3) for n in engine.observe(result(i, {"age": 0.3}))]
    retrain = [n for n in notes if n["alert"] == "retrain_recommended"]
    assert len(retrain) == 1 and retrain[0]["evidence"]["key_features"] == ["age"]


def test_retrain_on_critical_prediction_drift_once_it_is_firing():
    engine = AlertEngine(make_config(), "sha256:abc")
    first = engine.observe(result(0, prediction=0.2))
    assert not [n for n in first if n["alert"] == "retrain_recommended"]  # one window is not enough
    second = engine.observe(result(1, prediction=0.2))
    kinds = [(n["alert"], n["severity"]) for n in second]
    assert ("prediction_drift", "critical") in kinds and ("retrain_recommended", "critical") in kinds


def test_data_quality_missing_increase_and_invalid_share():
    engine = AlertEngine(make_config(), "sha256:abc", baseline_missing={"car_value": 0.10})
    steps = run(engine, [result(i, missing={"car_value": 0.13}) for i in range(3)])
    assert steps == [[], [], []]  # +3 points over the baseline's 10% is below the 5-point default
    steps = run(engine, [result(i, missing={"car_value": 0.30}, invalid=50) for i in range(3, 5)])
    assert set(steps[1]) == {("data_quality", "car_value:missing", "firing", "critical"),
                             ("data_quality", "invalid_messages", "firing", "critical")}


def test_state_round_trip_continues_the_lifecycle():
    config = make_config()
    a = AlertEngine(config, "sha256:abc")
    a.observe(result(0, {"car_value": 0.15}))
    state = json.loads(json.dumps(a.state_dict()))
    b = AlertEngine(config, "sha256:abc").load_state_dict(state)
    assert run(b, [result(1, {"car_value": 0.15})]) == [[("feature_drift", "car_value", "firing", "warning")]]
    assert run(AlertEngine(config, "sha256:abc"), [result(1, {"car_value": 0.15})]) == [[]]


def test_notification_ids_are_stable_for_the_same_stream():
    config = make_config()
    stream = [result(i, {"car_value": 0.15} if i < 3 else None) for i in range(8)]
    ids = []
    for _ in range(2):
        engine = AlertEngine(config, "x")
        ids.append([n["notification_id"] for r in stream for n in engine.observe(r)])
    assert ids[0] == ids[1] and len(ids[0]) == len(set(ids[0])) == 2


def test_every_notification_runbook_link_has_a_section():
    from pathlib import Path

    from monitor.alerting import _RUNBOOK_ANCHOR
    from tests.test_rules import github_anchors

    anchors = github_anchors((Path(__file__).parent.parent / "docs" / "runbook.md").read_text())
    missing = {kind: a for kind, a in _RUNBOOK_ANCHOR.items() if a not in anchors}
    assert not missing
