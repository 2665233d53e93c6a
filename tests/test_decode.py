import math

import numpy as np
import pytest

from monitor.config import parse_config
from monitor.decode import Decoder
from monitor.synth import car_loan


@pytest.fixture(scope="module")
def decoder():
    return Decoder(parse_config(car_loan().config()).schema)


def test_good_batch_becomes_columns(decoder):
    msgs = car_loan(seed=3).messages(50)
    batch = decoder.decode(msgs)
    assert batch.n == 50 and not batch.invalid
    assert batch.columns["car_value"].dtype == np.float64
    assert len(batch.columns["salary_range"]) == 50
    assert batch.ids[0] == "req-000000000"
    # the nested path inputs.dti is read into the column named by the feature
    assert np.all((batch.columns["debt_to_income_ratio"] >= 0) & (batch.columns["debt_to_income_ratio"] <= 1))
    assert batch.timestamps[1] - batch.timestamps[0] == pytest.approx(0.001, abs=1e-4)


@pytest.mark.parametrize("raw,reason", [
    (b"not json", "not_json"),
    (b'{"id": "a", "car_value": "12"}', "wrong_type"),
    (b'{"car_value": 12}', "missing_field"),
    (b'{"id": "a", "car_value": NaN}', "nan"),
    (b'{"id": "a", "car_value": 1e999}', "nan"),
    (b'{"id": "a", "timestamp": "yesterday"}', "bad_timestamp"),
    (b'{"id": "a", "inputs": 5}', "wrong_type"),
    (b"", "not_json"),
    (b'{"id": "a"},{"id": "b"}', "not_json"),
])
def test_bad_message_is_counted_by_reason_and_the_rest_kept(decoder, raw, reason):
    good = car_loan(seed=4).messages(3)
    batch = decoder.decode([good[0], raw, good[1], good[2]])
    assert batch.n == 3
    assert dict(batch.invalid) == {reason: 1}
    assert batch.rejected == [(1, reason)]
    assert batch.valid.tolist() == [True, False, True, True]
    assert batch.ids == ["req-000000000", "req-000000001", "req-000000002"]


def test_missing_and_null_values_are_missing_not_invalid(decoder):
    batch = decoder.decode([b'{"id": 1, "car_value": null}', b'{"id": 2, "inputs": null}'])
    assert batch.n == 2 and not batch.invalid
    assert np.isnan(batch.columns["car_value"]).all()
    assert list(batch.columns["salary_range"]) == [None, None]


def test_epoch_and_iso_timestamps(decoder):
    batch = decoder.decode([b'{"id": 1, "timestamp": 1700000000.5}', b'{"id": 2, "timestamp": "2023-11-14T22:13:20Z"}',
                            b'{"id": 3}'])
    assert batch.timestamps[0] == 1700000000.5
    assert batch.timestamps[1] == 1700000000.0
    assert math.isnan(batch.timestamps[2])
