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
           window_seconds=600, baseline_missing=None):
    """A window result in the documented shape; drifted: feature -> effect value (threshold 0.1)."""
    drifted = drifted or {}
    missing = missing or {}
    features = {}
    for name in FEATURES:
        value = drifted.get(name, 0.02)
        features[name] = {
            "type": "numeric", "drift": name in drifted, "status": status, "events": events,
            "missing_ratio": missing.get(name, 0.0), "out_of_range_ratio": 0.0,
            "baseline_missing_ratio": (baseline_missing or {}).get(name, 0.0),
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


def flap_run(bits: str, **alerts):
    """Drive car_value through a pattern of bad (B) and clean (C) windows; return (window, status, flapping)."""
    engine = AlertEngine(make_config(repeat_interval="24h", **alerts), "sha256:abc")
    out = []
    for i, b in enumerate(bits):
        for n in engine.observe(result(i, {"car_value": 0.15} if b == "B" else None, window_seconds=60)):
            if n["alert"] == "feature_drift":
                out.append((i, n["status"], n["flapping"]))
    return out, engine


def test_steady_drift_pages_once_and_resolves_once_without_flapping():
    sent, engine = flap_run("C" * 5 + "B" * 12 + "C" * 25)
    assert sent == [(6, "firing", False), (19, "resolved", False)]
    assert engine.states == {}  # nothing left once the history is clean


def test_alternating_drift_pages_once_as_intermittent_and_holds():
    sent, engine = flap_run("BC" * 20)
    # never two bad windows in a row, yet half the windows drift: one page, flagged intermittent
    assert sent == [(6, "firing", True)]  # 4 bad windows, 6 changes: flapping from window 6
    sent2, _ = flap_run("BC" * 20 + "C" * 25)
    assert sent2[0] == (6, "firing", True)
    # it resolves once, when the last 20 windows show at most one change (19 windows after the last bad one)
    assert sent2[1:] == [(57, "resolved", False)]  # the last bad window was 38


def test_issue_pattern_two_bad_three_clean_pages_twice_not_four_times():
    sent, _ = flap_run("BBCCC" * 4)
    # the first episode is indistinguishable from a real one; its return is intermittent and holds
    assert sent == [(1, "firing", False), (4, "resolved", False), (6, "firing", False)]
    engine = AlertEngine(make_config(repeat_interval="24h"), "sha256:abc")
    for i, b in enumerate("BBCCC" * 4):
        engine.observe(result(i, {"car_value": 0.15} if b == "B" else None, window_seconds=60))
    [state] = engine.states.values()
    assert state.firing and state.flapping
    [active] = engine.active()
    assert active["flapping"] and "intermittently" in active["summary"]
    assert active["flap"]["bad_windows"] == 8 and active["flap"]["changes"] == 7


def test_slow_flapping_pages_twice_in_sixty_windows():
    sent, _ = flap_run("BBBBBCCCCC" * 6)
    assert sent == [(1, "firing", False), (7, "resolved", False), (11, "firing", False)]


def test_scattered_false_positives_are_not_flapping():
    # three isolated bad windows in 20: 6 changes but only 3 bad windows (min_bad 20% = 4)
    sent, engine = flap_run("CCBCCCCCBCCCCCCBCCCC")
    assert sent == []


def test_flapping_policy_is_configurable():
    # with flapping effectively off (high 1.0), the 2-bad-3-clean pattern pages per cycle, as before
    sent, _ = flap_run("BBCCC" * 4, flapping={"high": 1.0})
    assert [s for _, s, _ in sent] == ["firing", "resolved"] * 4


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
    engine = AlertEngine(make_config(), "sha256:abc")
    base = {"car_value": 0.10}  # the baseline's share, carried in the window result beside the window's
    steps = run(engine, [result(i, missing={"car_value": 0.13}, baseline_missing=base) for i in range(3)])
    assert steps == [[], [], []]  # +3 points over the baseline's 10% is below the 5-point default
    steps = run(engine, [result(i, missing={"car_value": 0.30}, invalid=50, baseline_missing=base)
                         for i in range(3, 5)])
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


class FakeClock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_timestamps_come_from_the_clock_not_from_event_time():
    clock = FakeClock(1_900_000_000.0)
    engine = AlertEngine(make_config(), "sha256:abc", clock=clock)
    engine.observe(result(0, {"car_value": 0.15}))
    [fired] = engine.observe(result(1, {"car_value": 0.15}))
    assert fired["starts_at"] == "2030-03-17T17:46:40.000Z" and fired["ends_at"] is None
    assert fired["window"]["end"] == "2026-01-01T00:10:00.000Z"  # event time stays in the window
    clock.now += 3600
    resolved = [n for i in range(2, 5) for n in engine.observe(result(i))]
    assert [(n["status"], n["starts_at"], n["ends_at"]) for n in resolved] == [
        ("resolved", "2030-03-17T17:46:40.000Z", "2030-03-17T18:46:40.000Z")]
    # without a clock (replay), both are event times: reproducible
    engine = AlertEngine(make_config(), "sha256:abc")
    notes = [n for i in range(5) for n in engine.observe(result(i, {"car_value": 0.15} if i < 2 else None))]
    assert [(n["starts_at"], n["ends_at"]) for n in notes] == [
        ("2026-01-01T00:10:00.000Z", None), ("2026-01-01T00:10:00.000Z", "2026-01-01T00:40:00.000Z")]


def test_escalation_is_marked_for_the_alertmanager_identity_change():
    from monitor.config import Sink
    from monitor.sinks import AlertmanagerSink

    engine = AlertEngine(make_config(), "sha256:abc", clock=FakeClock(1_900_000_000.0))
    engine.observe(result(0, {"car_value": 0.15}))
    [warning] = engine.observe(result(1, {"car_value": 0.15}))
    [critical] = engine.observe(result(2, {"car_value": 0.35}))
    assert "escalated_from" not in warning and critical["escalated_from"] == "warning"
    sink = AlertmanagerSink(Sink(type="alertmanager", url="http://am:9093"))
    old, new = sink.alerts(critical, 1_900_000_100.0)
    assert old["labels"]["severity"] == "warning" and old["endsAt"] == "2030-03-17T17:48:20.000Z"  # resolved now
    assert new["labels"]["severity"] == "critical" and new["endsAt"] == "2030-03-17T17:53:20.000Z"  # now + 5m TTL
    assert {k: v for k, v in old["labels"].items() if k != "severity"} == \
        {k: v for k, v in new["labels"].items() if k != "severity"}
    # a resolve whose end is ahead of the send time (a clock ahead) is sent as ending now
    [resolved] = [n for i in range(3, 6) for n in engine.observe(result(i))]
    [alert] = sink.alerts(resolved, 1_899_999_000.0)
    assert alert["endsAt"] == "2030-03-17T17:30:00.000Z" and alert["labels"]["severity"] == "critical"


def test_slack_resolved_message_has_no_severity():
    from monitor.config import Sink
    from monitor.sinks import SlackSink

    engine = AlertEngine(make_config(), "sha256:abc")
    notes = [n for i in range(6) for n in engine.observe(result(i, {"car_value": 0.35} if i < 2 else None))]
    slack = SlackSink(Sink(type="slack", url="http://hooks.example/x"))
    fired, resolved = (slack.body(n)["text"] for n in notes)
    assert "*FIRING* [critical]" in fired
    assert resolved.startswith(":white_check_mark: *RESOLVED* car-loan: feature car_value is back")
    assert "critical" not in resolved


def test_active_lists_firing_alerts_without_advancing_them():
    engine = AlertEngine(make_config(), "sha256:abc")
    for i in range(2):
        engine.observe(result(i, {"car_value": 0.15}))
    first = engine.active()
    assert [(n["dedup_key"], n["status"]) for n in first] == [("car-loan/feature_drift/car_value", "firing")]
    assert engine.active() == first  # no side effect: the sequence number did not move
    assert run(engine, [result(2, {"car_value": 0.15})]) == [[]]


def test_one_clean_window_inside_sustained_drift_is_one_retraining_episode_with_one_key():
    engine = AlertEngine(make_config(repeat_interval="30m", retrain={"windows": 3, "drift_weight_share": 0.3}),
                         "sha256:abc")
    drift = {"car_value": 0.3, "salary_range": 0.12, "credit_score": 0.11}  # 3 of 8 features
    stream = [result(i, None if i == 5 else drift) for i in range(12)] + [result(i) for i in range(12, 40)]
    notes = [n for r in stream for n in engine.observe(r) if n["alert"] == "retrain_recommended"]
    firing = [n for n in notes if n["status"] == "firing"]
    assert [n["window"]["index"] for n in firing][0] == 2 and len(firing) >= 2  # repeats every 30 minutes
    assert len({n["idempotency_key"] for n in notes}) == 1  # repeats and the resolve share the episode's key
    assert [n["status"] for n in notes].count("resolved") == 1 and notes[-1]["status"] == "resolved"
    assert notes[-1]["window"]["index"] >= 14  # not before the feature alerts themselves resolved
    first = firing[0]
    # the firing trigger carries its evidence
    assert [f["name"] for f in first["features"]] == ["car_value", "salary_range", "credit_score"]
    assert first["features"][0]["score"] == 0.3 and first["features"][0]["weight"] == 1.0
    assert first["evidence"]["drift_weight_share"] == pytest.approx(3 / 8)
    assert first["evidence"]["weights"] == {"car_value": 1.0, "salary_range": 1.0, "credit_score": 1.0}
    assert first["evidence"]["prediction"]["score"] == 0.01  # the prediction's drift score, drifting or not
    assert [w["index"] for w in first["evidence"]["windows"]] == [0, 1, 2]
    assert first["evidence"]["windows"][0]["offsets"] == {"t:0": [0, 999]}
    assert first["evidence"]["episode_start"] == "2026-01-01T00:20:00.000Z" == first["window"]["end"]
    # the key: model, baseline fingerprint and the episode's start in event time; nothing that restarts
    import hashlib
    expected = hashlib.sha256(b"car-loan|sha256:abc|2026-01-01T00:20:00.000Z").hexdigest()[:32]
    assert first["idempotency_key"] == expected
    restarted = AlertEngine(make_config(retrain={"windows": 3}), "sha256:abc")  # state lost: a later episode
    later = [n for i in range(100, 103) for n in restarted.observe(result(i, drift))
             if n["alert"] == "retrain_recommended"]
    assert later[0]["idempotency_key"] != expected
    other_baseline = AlertEngine(make_config(retrain={"windows": 3}), "sha256:def")
    same_time = [n for r in stream[:3] for n in other_baseline.observe(r) if n["alert"] == "retrain_recommended"]
    assert same_time[0]["idempotency_key"] != expected


def test_retraining_on_critical_prediction_drift_carries_the_prediction_score():
    engine = AlertEngine(make_config(), "sha256:abc")
    notes = [n for i in range(2) for n in engine.observe(result(i, prediction=0.2))]
    [trigger] = [n for n in notes if n["alert"] == "retrain_recommended"]
    pred = trigger["evidence"]["prediction"]
    assert pred["score"] == 0.2 and pred["threshold"] == 0.05 and pred["severity"] == "critical"
    assert "critical prediction drift (jensen_shannon 0.2 >= 0.05)" in trigger["summary"]


def test_a_restart_from_a_checkpoint_keeps_the_episode_and_its_key():
    config = make_config(repeat_interval="10m", retrain={"windows": 3, "drift_weight_share": 0.3})
    drift = {"car_value": 0.3, "salary_range": 0.12, "credit_score": 0.11}
    a = AlertEngine(config, "sha256:abc")
    before = [n for i in range(4) for n in a.observe(result(i, drift)) if n["alert"] == "retrain_recommended"]
    b = AlertEngine(config, "sha256:abc").load_state_dict(json.loads(json.dumps(a.state_dict())))
    after = [n for i in range(4, 6) for n in b.observe(result(i, drift)) if n["alert"] == "retrain_recommended"]
    assert before and after and {n["idempotency_key"] for n in before + after} == {before[0]["idempotency_key"]}
    assert b.flapping()["feature_drift"] == 0 and b.firing()["retrain_recommended"] == 1


def test_pagerduty_trigger_carries_the_retraining_evidence_and_flap_details(monkeypatch):
    from monitor.config import Sink
    from monitor.sinks import PagerDutySink

    engine = AlertEngine(make_config(), "sha256:abc")
    notes = [n for i in range(3) for n in engine.observe(result(i, prediction=0.2))]
    [trigger] = [n for n in notes if n["alert"] == "retrain_recommended"]
    monkeypatch.setenv("DRIFTMON_PAGERDUTY_ROUTING_KEY", "k")
    details = PagerDutySink(Sink(type="pagerduty")).body(trigger)["payload"]["custom_details"]
    assert details["idempotency_key"] == trigger["idempotency_key"]
    assert details["evidence"]["prediction"]["score"] == 0.2 and details["flapping"] is False
