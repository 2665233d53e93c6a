"""The window detector protocol: every registered detector implements it, partial windows merge exactly,
checkpoints round-trip (and older ones load), and the window result is derived from the detectors."""

import json

import numpy as np
import pytest

from detectors.window import WindowContext, WindowDetector
from monitor.baseline import Baseline
from monitor.pipeline import Pipeline
from monitor.registry import REGISTRY, build_detectors
from monitor.synth import car_loan
from tests.helpers import same, write_setup

WINDOW = 4000


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    # every registered detector on: features and outputs, estimated performance (score + label), multivariate
    # (PCA reconstruction; the domain classifier's sample merges as a sample, so it is compared apart), segments
    tmp = tmp_path_factory.mktemp("detectors")
    _path, config = write_setup(tmp, car_loan(seed=3), schema={"label": {"name": "repaid", "type": "categorical"}},
                                window={"size": WINDOW}, segments=[{"name": "channel", "path": "channel"}],
                                multivariate={"methods": ["pca_reconstruction"]})
    return config, Baseline.load(config.baseline)


def messages(n, drift_at=None, seed=5):
    return car_loan(seed=seed).messages(n, drift_at=drift_at, start_time=1.7e9)


def counts_of(state):
    """Every integer count in a checkpoint (bins, categories, missing, out of range, events), by path."""
    out = {}

    def walk(node, path):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{path}/{k}")
        elif isinstance(node, list) and node and all(isinstance(x, int) and not isinstance(x, bool) for x in node):
            out[path] = list(node)
        elif isinstance(node, int) and not isinstance(node, bool):
            out[path] = node
    walk(state, "")
    return out


def test_every_registered_detector_implements_the_protocol(setup):
    config, baseline = setup
    detectors = build_detectors(config, baseline)
    assert [d.key for d in detectors] == ["accumulators", "estimated", "multivariate", "segments"]
    assert len(REGISTRY) == len(detectors)  # all four configured here
    batch = Pipeline(config, baseline).decoder.decode(messages(500))
    context = WindowContext(index=0, events=batch.n, alpha=0.01)
    for d in detectors:
        assert isinstance(d, WindowDetector), d.key
        assert d.update(batch) is d
        twin = d.fresh()
        assert type(twin) is type(d) and twin.key == d.key
        assert twin.load_state_dict(json.loads(json.dumps(d.state_dict()))) is twin
        assert json.dumps(twin.state_dict(), sort_keys=True) == json.dumps(d.state_dict(), sort_keys=True)
        sections = d.result(context).sections()
        assert sections == twin.result(context).sections()
        json.dumps(sections, allow_nan=False)  # JSON-safe at the edge


@pytest.mark.parametrize("parts", [2, 3])
def test_partial_windows_merge_into_the_whole_window(setup, parts):
    """Split one window's events among workers (as partitions would), merge: the counts are the whole
    window's bit for bit, the statistics equal but for float rounding, the decisions identical."""
    config, baseline = setup
    stream = messages(WINDOW - 1, drift_at=WINDOW // 2)  # one short: the windows stay open
    whole = Pipeline(config, baseline)
    whole.process(stream)
    workers = [Pipeline(config, baseline) for _ in range(parts)]
    rng = np.random.default_rng(parts)
    owner = rng.integers(0, parts, size=len(stream))
    for i, worker in enumerate(workers):
        mine = [m for m, o in zip(stream, owner) if o == i]
        for start in range(0, len(mine), 700):  # batches of another size than the whole's
            worker.process(mine[start:start + 700])
    # the partials travel as JSON (a topic's records): the aggregator loads each into an empty window and merges
    partials = [json.loads(json.dumps(w.window.state_dict())) for w in workers]
    merged = whole.window.fresh(0).load_state_dict(partials[0])
    for partial in partials[1:]:
        merged.merge(whole.window.fresh(0).load_state_dict(partial))

    a, b = whole.window.state_dict(), merged.state_dict()
    assert a["events"] == b["events"] == WINDOW - 1
    assert counts_of(a) == counts_of(b) and len(counts_of(a)) > 100
    assert same(a["accumulators"], b["accumulators"]) and same(a["segments"], b["segments"])
    assert same(a["estimated"], b["estimated"])
    ra, rb = (whole.evaluator.evaluate(w) for w in (whole.window, merged))
    assert ra["drifted"] == rb["drifted"] and ra["drifted"]  # the drift is seen, by both
    assert same(ra["features"], rb["features"], rel=1e-7)
    assert same(ra["segments"], rb["segments"], rel=1e-7) and same(ra["prediction"], rb["prediction"], rel=1e-7)
    assert same(ra["estimated_performance"], rb["estimated_performance"])
    assert same(ra["multivariate"], rb["multivariate"], rel=1e-7)


def test_merge_refuses_another_period_or_other_detectors(setup):
    config, baseline = setup
    p = Pipeline(config, baseline)
    with pytest.raises(ValueError, match="cannot merge window 1"):
        p.window.merge(p.window.fresh(1))
    other = p.window.fresh(0)
    other.detectors = other.detectors[:1]
    with pytest.raises(ValueError, match="different detectors"):
        p.window.merge(other)
    features, segments = p.window.detectors[0], p.window.detectors[-1]
    with pytest.raises(TypeError):
        features.merge(segments)


def test_results_are_the_detectors_sections_in_registry_order(setup):
    config, baseline = setup
    p = Pipeline(config, baseline)
    (result,), _ = p.process(messages(WINDOW))
    assert list(result)[:3] == ["model", "baseline_fingerprint", "window"]
    assert list(result)[3:] == ["drifted", "features", "prediction", "score", "label", "estimated_performance",
                                "multivariate", "segments"]
    assert set(result["segments"]["channel"]) == {"web", "branch", "partner"}


def test_a_checkpoint_from_before_the_protocol_loads(setup):
    """Older checkpoints held every segment value as a whole window; they restore to the same result."""
    config, baseline = setup
    p = Pipeline(config, baseline)
    p.process(messages(WINDOW - 1))
    state = p.state_dict()
    old = json.loads(json.dumps(state))
    for values in old["window"]["segments"].values():
        for value, sub in values.items():  # the old layout: a full window state per segment value
            values[value] = {"index": 0, "start": None, "end": None, "events": sub["events"], "invalid": 0,
                             "first_time": None, "last_time": None, "offsets": {},
                             "accumulators": sub["accumulators"], "estimated": {}, "segments": {}}
    restored = Pipeline(config, baseline).load_state_dict(old)
    assert restored.evaluator.evaluate(restored.window) == p.evaluator.evaluate(p.window)


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("labelled")
    _path, config = write_setup(tmp, car_loan(seed=4), schema={"label": {"name": "repaid", "type": "categorical"}},
                                window={"size": WINDOW}, segments=[{"name": "channel", "path": "channel"}],
                                fairness={"attributes": [{"name": "channel", "path": "channel"}], "favourable": "1",
                                          "min_group_size": 50},
                                labels={"window": 100_000})
    return config, Baseline.load(config.baseline)


def test_labelled_window_detectors_merge_into_the_whole(labelled):
    """Performance, segment performance, fairness and label drift of labelled partials: the whole window's."""
    config, baseline = labelled
    stream = messages(6000, drift_at=3000, seed=6)
    whole = Pipeline(config, baseline)
    whole.process(stream)
    keys = [d.key for d in whole.tracker.detectors]
    assert keys == ["acc", "by_segment", "groups", "label_acc"]
    workers = [Pipeline(config, baseline) for _ in range(3)]
    for i, m in enumerate(stream[:30]):  # a few single-message batches too
        workers[i % 3].process([m])
    for k, worker in enumerate(workers):
        worker.process([m for i, m in enumerate(stream[30:]) if i % 3 == k])
    merged = workers[0].tracker.detectors
    for worker in workers[1:]:
        for mine, theirs in zip(merged, worker.tracker.detectors):
            assert isinstance(mine, WindowDetector)
            assert mine.merge(theirs) is mine
    context = WindowContext(index=0, events=6000, alpha=0.01)
    for a, b in zip(whole.tracker.detectors, merged):
        assert a.key == b.key
        ra, rb = a.result(context).sections(), b.result(context).sections()
        assert same(ra, rb, rel=1e-7), a.key
    perf = whole.tracker.detectors[0].result(context).sections()
    assert perf["metrics"]["n"] == 6000
    assert whole.tracker.detectors[2].groups["channel"].counts() == merged[2].groups["channel"].counts()
    assert counts_of(whole.tracker.detectors[3].state_dict()) == counts_of(merged[3].state_dict())  # label counts


def test_registered_fit_and_check_hooks_guard_the_baseline(setup):
    """A baseline without what a configured detector learns from the training data is refused at load."""
    import msgspec

    from monitor.config import ConfigError
    from monitor.registry import REGISTRY

    config, baseline = setup
    assert {k for k, e in REGISTRY.items() if e.fit is not None} == {"multivariate", "segments"}
    baseline.check(config)  # built from this config: complete
    for key, section in (("segments", "segments"), ("multivariate", "multivariate.methods")):
        extras = {k: v for k, v in baseline.extras.items() if k != key}
        stripped = Baseline(baseline.profiles, baseline.roles, baseline.meta, extras)
        with pytest.raises(ConfigError) as err:
            stripped.check(config)
        assert err.value.key == section and "rebuild it" in str(err.value)
    no_segments = msgspec.structs.replace(config, segments=[])
    Baseline(baseline.profiles, baseline.roles, baseline.meta,
             {k: v for k, v in baseline.extras.items() if k != "segments"}).check(no_segments)
