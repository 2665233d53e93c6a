"""Property tests of the decoder: whatever bytes a batch holds, one outcome per record, and no exception.

Each record is judged on its own boundaries, so a record's outcome (valid with its values, or rejected
with a reason) is the same whichever records surround it; that is checked against decoding every record
alone, and valid records are checked against Python's own JSON parser.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monitor.config import parse_config
from monitor.decode import INVALID_REASONS, Decoder
from monitor.pipeline import Pipeline
from monitor.synth import car_loan

MAX_BYTES = 4096  # small, so that the generated records reach the size limit too
CONFIG = parse_config(car_loan().config())
DECODER = Decoder(CONFIG.schema, max_bytes=MAX_BYTES)
DEFAULT = Decoder(CONFIG.schema)  # the default size limit, 1 MiB
GOOD = car_loan(seed=5).messages(40)

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                         st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20))
json_trees = st.recursive(json_scalars, lambda kids: st.one_of(
    st.lists(kids, max_size=5), st.dictionaries(st.text(max_size=8), kids, max_size=5)), max_leaves=30)
# Values that may land in the monitored fields: right and wrong types, absurd numbers, odd timestamps.
field_values = st.one_of(json_scalars, st.sampled_from(["2026-01-01T00:00:00Z", "2026-01-01T00:00:00+02:00",
                                                        "yesterday", "9999-12-31T23:59:59-23:59", "", "Z"]),
                         st.floats(min_value=-1e300, max_value=1e300), st.just({}), st.just([]))
monitored = ["id", "timestamp", "car_value", "salary_range", "inputs", "age", "y_pred", "y_pred_proba"]


@st.composite
def messages(draw):
    """A JSON object with monitored keys holding anything, and unmonitored keys holding any tree."""
    obj = {k: draw(field_values) for k in draw(st.lists(st.sampled_from(monitored), unique=True))}
    if draw(st.booleans()):
        obj["inputs"] = {"dti": draw(field_values), "other": draw(json_trees)}
    obj.update(draw(st.dictionaries(st.sampled_from(["extra", "meta", "tags"]), json_trees, max_size=2)))
    return json.dumps(obj).encode()


def deep(n: int, opener: bytes = b"[", closer: bytes = b"]") -> bytes:
    return opener * n + closer * n


@st.composite
def fragments(draw):
    """Pieces of valid messages: a prefix, a suffix, or two objects in one record."""
    a, b = draw(st.sampled_from(GOOD)), draw(st.sampled_from(GOOD))
    cut = draw(st.integers(1, len(a) - 1))
    return draw(st.sampled_from([a[:cut], a[cut:], a + b"," + b, a + b" " + b, a + b, b"[" + a + b"]"]))


records = st.one_of(
    st.sampled_from(GOOD),
    st.none(),
    st.binary(max_size=300),
    messages(),
    json_trees.map(lambda t: json.dumps(t).encode()),
    fragments(),
    messages().map(lambda m: m + b"\xff" * 3),
    st.integers(1, 3000).map(lambda n: b'{"id": "d", "extra": ' + deep(n) + b"}"),
    st.just(deep(10_000, b'{"a":', b"}")),
    st.binary(min_size=MAX_BYTES - 2, max_size=MAX_BYTES + 2),
)


def alone(value):
    """The outcome of decoding one record by itself: ('valid', id) or ('invalid', reason)."""
    b = DECODER.decode([value])
    assert b.n + sum(b.invalid.values()) == 1
    return ("valid", b.ids[0]) if b.n else ("invalid", b.rejected[0][1])


def python_parses_to_object(value) -> bool:
    try:
        return isinstance(json.loads(value.decode("utf-8", "surrogateescape")), dict)
    except (ValueError, RecursionError):
        return False


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(records, max_size=25))
def test_every_record_has_exactly_one_outcome_whatever_its_neighbours(values):
    batch = DECODER.decode(values)
    assert batch.valid.shape == (len(values),)
    assert batch.n == int(batch.valid.sum())
    assert batch.n + sum(batch.invalid.values()) == len(values)
    assert set(batch.invalid) <= set(INVALID_REASONS)
    assert sorted(i for i, _ in batch.rejected) == np.flatnonzero(~batch.valid).tolist()
    assert len(batch.ids) == batch.n and len(batch.timestamps) == batch.n
    for column in batch.columns.values():
        assert len(column) == batch.n

    # Batching changes nothing: each record has the outcome it has alone.
    ids = iter(batch.ids)
    reasons = dict(batch.rejected)
    for i, value in enumerate(values):
        got = ("valid", next(ids)) if batch.valid[i] else ("invalid", reasons[i])
        assert got == alone(value), (i, value[:200] if value else value)
        if batch.valid[i]:
            assert len(value) <= MAX_BYTES and python_parses_to_object(value)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(GOOD), min_size=1, max_size=10), st.data())
def test_a_well_formed_object_with_an_id_is_always_valid(values, data):
    extra = data.draw(json_trees)
    values = values + [json.dumps({"id": "x1", "unmonitored": extra}).encode()]
    batch = DECODER.decode(values)
    assert batch.n == len(values) and not batch.invalid
    assert batch.ids[-1] == "x1"


def test_records_split_or_joined_across_boundaries_are_each_rejected():
    values = [b'{"id":"t1","x1":1', b'"x2":2}', b'{"id":"t2"},{"id":"t3"}']
    batch = DECODER.decode(values)
    assert batch.n == 0 and dict(batch.invalid) == {"not_json": 3}
    # ... and a crafted set whose pieces would balance inside one JSON array
    values = [b'{"id":"a","s":"}', b'{"}', b'{"id":"b"},{"id":"c"}', GOOD[0]]
    batch = DECODER.decode(values)
    assert batch.valid.tolist() == [False, False, False, True] and batch.ids == ["req-000000000"]


@pytest.mark.parametrize("value,reason", [
    (None, "null_value"),
    (b"", "not_json"),
    (b"[1, 2]", "not_object"),
    (b'"text"', "not_object"),
    (b"42", "not_object"),
    (b"null", "not_object"),
    (b'{"id": "a"} {"id": "b"}', "not_json"),
    (b"\xff\xfe{}", "not_utf8"),
    (b'{"id": "\xff"}', "not_utf8"),
    (b'{"id": "a", "timestamp": 1700000000000}', "bad_timestamp"),  # epoch milliseconds
    (b'{"id": "a", "timestamp": -5}', "bad_timestamp"),
    (b'{"id": "a", "timestamp": "10000-01-01T00:00:00Z"}', "bad_timestamp"),
    (b'{"id": "a", "car_value": 1' + b"0" * 1_048_576 + b"}", "too_large"),
    (deep(10_000), "too_deep"),
    (deep(10_000, b'{"a":', b"}"), "too_deep"),
    (b'{"id": "a", "junk": ' + deep(10_000) + b"}", "too_deep"),  # in a field nobody reads
    (b'{"id": "a", "inputs": {"x": ' + deep(10_000) + b"}}", "too_deep"),
])
def test_poison_records_are_rejected_with_their_reason_and_the_rest_kept(value, reason):
    batch = DEFAULT.decode([GOOD[0], value, GOOD[1]])
    assert batch.ids == ["req-000000000", "req-000000001"]
    assert dict(batch.invalid) == {reason: 1} and batch.rejected == [(1, reason)]


def test_moderate_nesting_in_unread_fields_is_valid():
    batch = DECODER.decode([b'{"id": "a", "junk": ' + deep(500) + b"}"])
    assert batch.n == 1 and not batch.invalid


def test_record_size_limit_is_inclusive():
    pad = b'{"id": "a", "pad": "'
    exact = pad + b"x" * (MAX_BYTES - len(pad) - 2) + b'"}'
    assert len(exact) == MAX_BYTES
    assert DECODER.decode([exact]).n == 1
    assert dict(DECODER.decode([exact[:-2] + b'x"}']).invalid) == {"too_large": 1}


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    import pyarrow.parquet as pq

    from monitor.baseline import build_baseline

    path = tmp_path_factory.mktemp("props") / "train.parquet"
    pq.write_table(car_loan(seed=0).training_table(3000), path)
    return build_baseline(CONFIG, str(path))


def test_the_pipeline_takes_its_size_limit_from_the_config(baseline):
    tree = car_loan().config(kafka={"bootstrap_servers": "x:9092", "topic": "t", "group_id": "g",
                                    "max_message_bytes": len(GOOD[0])})
    pipeline = Pipeline(parse_config(tree), baseline)
    _results, batch = pipeline.process([GOOD[0], GOOD[0] + b" "])
    assert batch.n == 1 and dict(pipeline.invalid) == {"too_large": 1}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(batches=st.lists(st.lists(records, max_size=15), max_size=6))
def test_the_pipeline_counts_every_record_once_and_never_raises(baseline, batches):
    config = parse_config(car_loan().config(window={"size": 7}))
    pipeline = Pipeline(config, baseline)
    pipeline.decoder.max_bytes = MAX_BYTES
    events = 0
    for i, values in enumerate(batches):
        broker_times = np.full(len(values), 1.7e9 + i)
        _results, batch = pipeline.process(values, broker_times, "t:0", np.arange(len(values)) + 100 * i)
        events += batch.n
    total = sum(len(v) for v in batches)
    assert pipeline.consumed == total
    assert events + sum(pipeline.invalid.values()) == total
    assert pipeline.window.events == events - 7 * pipeline.windows_evaluated
