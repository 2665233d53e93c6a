"""bench.join_floor (figure 6's floor): at a tiny size its RocksDB stores hold the daemon's values and return
them, every subject keeps its pending count, the tuned stores open as named, and the headline is the median
of the rounds' (RocksDB - dict) / budget. No timing is asserted."""

from __future__ import annotations

import statistics

import pytest

from bench import join as bj
from bench import join_floor as jf
from monitor.join import _HEAD, PREDICTION, RocksStore

PENDING, PER_ROUND, ROUNDS = 4000, 2000, 2


@pytest.fixture(scope="module")
def result() -> dict:
    return jf.run(quick=True, pending=PENDING, per_round=PER_ROUND, rounds=ROUNDS, pipeline_pending=2000)


@pytest.mark.parametrize("kind", jf.IDS)
def test_its_ids_are_bench_joins(kind, monkeypatch):
    monkeypatch.setattr(bj, "IDS", kind)
    assert [jf._id(i, kind) for i in (0, 1, 12345)] == [bj._id(i) for i in (0, 1, 12345)]


def test_its_values_are_the_daemons(tmp_path):
    store = RocksStore(str(tmp_path / "s"))
    value = jf._Values()(4321)
    assert value[_HEAD:] == store._encode(jf._row(4321))  # the header is the daemon's length, the payload its msgpack
    assert store._value(value) == [jf._time(4321), PREDICTION, jf._row(4321), jf._time(4321)]
    store.close()


def test_the_stores_return_what_they_hold_and_keep_their_count(result):
    assert set(result["ids"]) == set(jf.IDS)
    for kind, e in result["ids"].items():
        assert (e["dict_pending"], e["dict_missing"]) == (PENDING, 0)  # every label found its prediction
        assert set(e["stores"]) == set(jf.VARIANTS)
        for variant, s in e["stores"].items():
            assert s["entries"] == PENDING, (kind, variant)
            assert s["values_checked"] == (ROUNDS + 1) * PER_ROUND  # the warm-up round's too
            assert s["values_mismatched"] == 0, (kind, variant)


def test_the_tuned_stores_open_as_named(result):
    for e in result["ids"].values():
        options = {v: s["options"] for v, s in e["stores"].items()}
        assert options["daemon"]["block_size"] == options["unchecked"]["block_size"] == "4096"
        assert options["1kib_blocks"]["block_size"] == "1024"
        for o in options.values():  # the rest as the daemon's (optimize_for_point_lookup, no compression)
            assert o["compression"] == "kNoCompression"
            assert o["memtable_whole_key_filtering"] == "true"
            assert o["data_block_index_type"] == "kDataBlockBinaryAndHash"


def test_every_figure_is_positive_and_the_ratio_is_of_the_rounds(result):
    assert len(result["detail"]["pipeline"]) == ROUNDS
    budgets = [jf.BUDGET_SHARE * x["cpu_us"] for x in result["detail"]["pipeline"]]
    assert result["budget_us"]["cpu"] == pytest.approx(statistics.median(budgets))
    for m in ("cpu", "wall"):
        assert result["pipeline_us"][m] > 0 and result["budget_us"][m] > 0
    for kind, e in result["ids"].items():
        for m in ("cpu", "wall"):
            assert e["dict_us"][m] > 0 and e["before_join_us"][m] > 0
            for variant, s in e["stores"].items():
                assert min(s[f"{c}_us"][m] for c in ("get", "batch", "write")) > 0
                rounds = result["detail"][f"{kind}/{variant}"]
                for x in rounds:  # a pair on RocksDB: its get, the write batch built, then written
                    assert x[f"{m}_us"] == pytest.approx(sum(x[f"{c}_{m}_us"] for c in ("get", "batch", "write")))
                assert s["rocks_us"][m] == pytest.approx(statistics.median(x[f"{m}_us"] for x in rounds))
        rocks = [x["cpu_us"] for x in result["detail"][f"{kind}/daemon"]]
        floor = [x["cpu_us"] for x in result["detail"][f"{kind}/dict"]]
        ratios = [(r - d) / b for r, d, b in zip(rocks, floor, budgets)]
        assert result["ratio"][kind]["cpu"] == pytest.approx(statistics.median(ratios))
        assert result["ids"][kind]["stores"]["daemon"]["ratio_range"] == pytest.approx([min(ratios), max(ratios)])
        assert result["ids"][kind]["stores"]["daemon"]["ratio_of_means"]["cpu"] == pytest.approx(
            (statistics.fmean(rocks) - statistics.fmean(floor)) / (jf.BUDGET_SHARE * statistics.fmean(
                x["cpu_us"] for x in result["detail"]["pipeline"])))
