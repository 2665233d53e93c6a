"""Figure 6's floor: what RocksDB's own calls cost per labelled pair, against what the target leaves for them.

Issue 9 item 9 asks that the on-disk label join keep "the join's per-message cost within 20% of today's",
today's being the join before the store (bench/join_before.py: two OrderedDicts). Per labelled pair (one
prediction, one label) the on-disk join may then cost at most 0.2 x the pipeline's cost per pair with the
join before the store more than that join does: the **budget**. This measures, in one process and at
1,000,000 pending entries, the least each side does per pair:

- **dict**: the join before the store's own dict operations: into its predictions' OrderedDict an insert
  and ``move_to_end`` per prediction, a ``pop`` per label (on a real :class:`bench.join_before.LabelJoin`'s
  dict); beside it the whole join before the store (``add_predictions``/``add_labels`` with prebuilt rows);
- **RocksDB**, opened as the daemon opens it (a real :class:`monitor.join.RocksStore`; its ``db`` and its
  write options): per batch of 2,000 pairs a batched ``db.get`` of 2,000 present keys (a label batch's
  lookup), then one write batch with 2,000 puts of new entries and 2,000 deletes of the keys looked up.
  Keys and values as the daemon's: ``e<id>``, a 25-byte header and a msgpack row. Nothing else the store
  does is in it (a prediction batch's lookups, the index record, counts, undo record, a second write per
  batch, our Python);
- the same calls on two tuned stores, fixes one might try: 1 KiB blocks (``optimize_for_point_lookup``'s
  table by hand otherwise), and reads without checksums with writes without the write-ahead log. The
  daemon's options already have the memtable's whole-key bloom filter (``optimize_for_point_lookup``);
- the budget, from figure 6's pipeline with the join before the store (bench.join: one feature, a
  prediction and a label message per pair through ``Pipeline.process``/``process_labels``), 200,000 pending.

Ids are sequential (``p-<i>``) or random (16 hex digits, spread as UUIDs are), as bench.join's. Every
subject runs in every round, in turn, reversed every other round (ABBA), after a warm-up round; each
figure is the CPU time of this thread (``time.thread_time``: RocksDB's background flushes and compactions
are left out, which favours RocksDB) and wall clock. The headline, per round then the median: (RocksDB's
calls per pair - the dict's operations per pair) / the budget. Above 1, RocksDB's calls alone take more than
the target allows, whatever the code around them does; ``over_join`` subtracts the whole join before the
store instead (as if the on-disk join had no Python of its own at all).

``python -m bench.join_floor [--quick]`` prints the figures as JSON; ``python -m bench.run --only join_floor``
puts them in bench/results.json and bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import statistics
import sys
import time
from collections import deque
from contextlib import contextmanager

BATCH = 2000
START = 1.7e9
RATE = 115.0  # predictions per second of event time, as bench.join
#: The target: the on-disk join's per-message cost at most 20% above the join's before the store.
BUDGET_SHARE = 0.2
IDS = ("sequential", "random")
#: name -> what it changes from the daemon's store (monitor.join.RocksStore._open)
VARIANTS = {
    "daemon": "RocksStore's options (optimize_for_point_lookup: 4 KiB blocks, bloom 10 bits, hash index, "
              "memtable whole-key bloom, 32 MiB block cache; no compression)",
    "1kib_blocks": "the same table options set by hand with 1 KiB blocks",
    "unchecked": "reads without checksum verification, writes without the write-ahead log",
}
#: options read back from each store's OPTIONS file, to show what was opened
SHOWN_OPTIONS = ("block_size", "filter_policy", "data_block_index_type", "memtable_whole_key_filtering",
                 "memtable_prefix_bloom_size_ratio", "compression", "write_buffer_size")


def _id(i: int, kind: str) -> str:
    """bench.join's ids: ``p-<i>``, or 16 hex digits of a bijective hash (spread as UUIDs are)."""
    if kind == "random":
        return "%016x" % ((i * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF)
    return f"p-{i}"


def _time(i: int) -> float:
    return START + i / RATE


def _row(i: int) -> list:
    return [i % 2, 0.5, _time(i), "A"]


class _Values:
    """The values the daemon stores: expiry key (8 bytes), kind (1), batch id (16), the row in msgpack."""

    def __init__(self):
        import msgspec

        from monitor.join import _HEAD, _U64, PREDICTION, _time_key

        self._encode = msgspec.msgpack.Encoder().encode
        self._time_key, self._kind, self._u64 = _time_key, bytes([PREDICTION]), _U64.pack
        self.head = _HEAD

    def __call__(self, i: int) -> bytes:
        header = self._time_key(_time(i)) + self._kind + self._u64(1) + self._u64(i // BATCH + 1)
        return header + self._encode(_row(i))


@contextmanager
def _tuned(tune):
    """Open a RocksStore with its own options changed by ``tune(options)`` just before RocksDB opens."""
    import rocksdict

    real = rocksdict.Rdict

    def opened(path, options, *args, **kwargs):
        tune(options)
        return real(path, options, *args, **kwargs)

    rocksdict.Rdict = opened  # (RocksStore._open imports Rdict from rocksdict when it runs)
    try:
        yield
    finally:
        rocksdict.Rdict = real


def _small_blocks(store_cache_mib: int):
    def tune(options):
        from rocksdict import BlockBasedOptions, Cache, DataBlockIndexType

        table = BlockBasedOptions()  # optimize_for_point_lookup's table (rocksdb/options/options.cc), 1 KiB blocks
        table.set_block_size(1024)
        table.set_bloom_filter(10, False)
        table.set_data_block_index_type(DataBlockIndexType.binary_and_hash())
        table.set_data_block_hash_ratio(0.75)
        table.set_block_cache(Cache(store_cache_mib << 20))
        options.set_block_based_table_factory(table)
    return tune


class _Rocks:
    """One RocksStore's database, with ``pending`` entries, and the calls of a labelled pair on it."""

    def __init__(self, kind: str, variant: str, path: str, values: _Values):
        from rocksdict import ReadOptions, WriteOptions

        from monitor.join import RocksStore

        self.kind, self.variant, self.values = kind, variant, values
        if variant == "1kib_blocks":  # (the daemon's block cache size: RocksStore's default, which it opens with)
            cache_mib = inspect.signature(RocksStore).parameters["cache_mib"].default
            with _tuned(_small_blocks(cache_mib)):
                self.store = RocksStore(path)
        else:
            self.store = RocksStore(path)
        self.db = self.store.db
        self.write_options, self.read_options = self.store._write, None  # the daemon's: default reads
        if variant == "unchecked":
            self.read_options = ReadOptions()
            self.read_options.set_verify_checksums(False)
            self.write_options = WriteOptions()
            self.write_options.disable_wal = True
        self.cursor = 0  # the oldest waiting entry
        self.checked = self.mismatched = 0

    def fill(self, pending: int) -> None:
        from rocksdict import WriteBatch

        for lo in range(0, pending, 10_000):
            wb = WriteBatch(raw_mode=True)
            for i in range(lo, min(pending, lo + 10_000)):
                wb.put(b"e" + _id(i, self.kind).encode(), self.values(i))
            self.db.write(wb, self.write_options)
        self.db.flush(True)
        self.db.compact_range(None, None)  # a compacted store: the lookups' best case

    def pairs(self, data: dict, n: int) -> dict:
        """``n`` labelled pairs: per batch, a get of the oldest waiting keys, then a write batch with the new
        entries' puts and the found keys' deletes. CPU and wall seconds of each call kind."""
        from rocksdict import WriteBatch

        db, wopt, ropt = self.db, self.write_options, self.read_options
        spent = dict.fromkeys(("get_cpu", "get_wall", "batch_cpu", "batch_wall", "write_cpu", "write_wall"), 0.0)
        found = []
        for old, new, values in zip(data["old_keys"], data["new_keys"], data["new_values"]):
            w0, c0 = time.perf_counter(), time.thread_time()
            raws = db.get(old) if ropt is None else db.get(old, None, ropt)
            w1, c1 = time.perf_counter(), time.thread_time()
            wb = WriteBatch(raw_mode=True)
            deque(map(wb.delete, old), 0)  # (the order of RocksStore._store: deletes, then puts)
            deque(map(wb.put, new, values), 0)
            w2, c2 = time.perf_counter(), time.thread_time()
            db.write(wb, wopt)
            w3, c3 = time.perf_counter(), time.thread_time()
            spent["get_cpu"] += c1 - c0
            spent["get_wall"] += w1 - w0
            spent["batch_cpu"] += c2 - c1
            spent["batch_wall"] += w2 - w1
            spent["write_cpu"] += c3 - c2
            spent["write_wall"] += w3 - w2
            found.append(raws)
        expected = data["old_values"]
        for raws, want in zip(found, expected):  # (outside the timing) RocksDB returned the stored values
            self.checked += len(want)
            if raws != want:
                self.mismatched += sum(a != b for a, b in zip(raws, want)) + abs(len(raws) - len(want))
        self.cursor += n
        return spent

    def entries(self) -> int:
        from rocksdict import ReadOptions

        ro = ReadOptions()
        ro.set_iterate_upper_bound(b"f")
        return sum(1 for _ in self.db.keys(from_key=b"e", read_opt=ro))

    def options(self) -> dict:
        """The options named in :data:`SHOWN_OPTIONS`, as RocksDB wrote them into the store's OPTIONS file."""
        path = self.store.path
        latest = max((f for f in os.listdir(path) if f.startswith("OPTIONS-")), key=lambda f: int(f.split("-")[1]))
        out = {}
        with open(os.path.join(path, latest), encoding="utf-8") as fh:
            for line in fh:
                key, _, value = line.strip().partition("=")
                if key in SHOWN_OPTIONS and key not in out:
                    out[key] = value
        return out


class _Dict:
    """The join before the store with ``pending`` predictions waiting: its dict's operations, and the whole join."""

    def __init__(self, kind: str, pending: int):
        from bench.join_before import LabelJoin

        self.kind = kind
        self.join = LabelJoin(ttl=1e12, max_pending=10**12)
        for lo in range(0, pending, BATCH):
            hi = min(pending, lo + BATCH)
            self.join.add_predictions([_id(i, kind) for i in range(lo, hi)], [_time(i) for i in range(lo, hi)],
                                      [_row(i) for i in range(lo, hi)])
        self.cursor = 0  # the oldest waiting prediction (the dict's rounds and the join's share the dict)
        self.missing = 0

    def floor(self, pending: int, n: int) -> tuple[float, float]:
        """``n`` pairs of the dict's own operations; (CPU, wall) seconds."""
        c = self.cursor
        new = [[_id(i, self.kind) for i in range(lo, lo + BATCH)] for lo in range(pending + c, pending + c + n, BATCH)]
        times = [[_time(i) for i in range(lo, lo + BATCH)] for lo in range(pending + c, pending + c + n, BATCH)]
        old = [[_id(i, self.kind) for i in range(lo, lo + BATCH)] for lo in range(c, c + n, BATCH)]
        row = _row(0)
        d = self.join.predictions
        move, pop = d.move_to_end, d.pop
        missing = 0
        w0, c0 = time.perf_counter(), time.thread_time()
        for keys, ts, gone in zip(new, times, old):
            for key, t in zip(keys, ts):  # a prediction: insert, to the end (as the join before the store)
                d[key] = [t, row]
                move(key)
            for key in gone:  # a label: its prediction out
                if pop(key, None) is None:
                    missing += 1
        cpu, wall = time.thread_time() - c0, time.perf_counter() - w0
        self.missing += missing
        self.cursor += n
        return cpu, wall

    def whole(self, pending: int, n: int) -> tuple[float, float]:
        """``n`` pairs through the whole join before the store (prebuilt rows, as bench.join's join alone)."""
        c = self.cursor
        batches = []
        for lo in range(0, n, BATCH):
            fresh = range(pending + c + lo, pending + c + lo + BATCH)
            waiting = range(c + lo, c + lo + BATCH)
            batches.append(([_id(i, self.kind) for i in fresh], [_time(i) for i in fresh], [_row(i) for i in fresh],
                            [_id(i, self.kind) for i in waiting], [_time(i) + 86400.0 for i in waiting]))
        labels = ["1"] * BATCH
        join, matched = self.join, self.join.matched
        w0, c0 = time.perf_counter(), time.thread_time()
        for ids, ts, rows, old, lts in batches:
            join.add_predictions(ids, ts, rows)
            join.add_labels(old, lts, labels)
        cpu, wall = time.thread_time() - c0, time.perf_counter() - w0
        self.missing += n - (join.matched - matched)
        self.cursor += n
        return cpu, wall


def _round_data(kind: str, cursor: int, pending: int, n: int, values: _Values) -> dict:
    """A round's keys and values for the RocksDB stores of one id kind (all at the same cursor)."""
    def keys(lo):
        return [b"e" + _id(i, kind).encode() for i in range(lo, lo + BATCH)]

    new_lo = range(pending + cursor, pending + cursor + n, BATCH)
    old_lo = range(cursor, cursor + n, BATCH)
    return {"new_keys": [keys(lo) for lo in new_lo],
            "new_values": [[values(i) for i in range(lo, lo + BATCH)] for lo in new_lo],
            "old_keys": [keys(lo) for lo in old_lo],
            "old_values": [[values(i) for i in range(lo, lo + BATCH)] for lo in old_lo]}


def _mean(rounds: list, key: str) -> float:
    return statistics.fmean(x[key] for x in rounds)


def _median_ratio(xs, ys, budgets) -> float:
    return statistics.median((x - y) / b for x, y, b in zip(xs, ys, budgets))


def run(quick: bool = False, pending: int | None = None, per_round: int | None = None, rounds: int | None = None,
        pipeline_pending: int | None = None) -> dict:
    from bench import join as bj
    from bench.common import log, scratch_dir
    from monitor.baseline import Baseline
    from monitor.config import load_config
    from monitor.daemon import streaming_gc

    pending = pending or (20_000 if quick else 1_000_000)
    per_round = per_round or (4_000 if quick else 100_000)
    rounds = rounds or (2 if quick else 9)
    pipeline_pending = pipeline_pending or (4_000 if quick else 200_000)
    pipeline_round = per_round if quick else 50_000
    if per_round % BATCH or pending % BATCH:
        raise ValueError(f"pending and per_round must be multiples of {BATCH}")
    tmp = scratch_dir("driftmon-bench-join-floor-")
    values = _Values()
    with streaming_gc():
        log(f"join_floor: the budget's pipeline (the join before the store), {pipeline_pending:,} pending")
        config = load_config(bj._setup(tmp))
        pipeline = bj._pipelines(config, Baseline.load(config.baseline), ("before",), "")["before"]
        bj._feed_predictions(pipeline, 0, pipeline_pending)
        dicts, stores = {}, {}
        for kind in IDS:
            log(f"join_floor: {kind} ids, the join before the store and {len(VARIANTS)} RocksDB stores, "
                f"{pending:,} entries each")
            dicts[kind] = _Dict(kind, pending)
            for variant in VARIANTS:
                s = stores[kind, variant] = _Rocks(kind, variant, os.path.join(tmp, f"{kind}-{variant}"), values)
                s.fill(pending)
        names = ["pipeline"] + [f"{kind}/{what}" for kind in IDS for what in ("dict", "before_join", *VARIANTS)]
        detail = {name: [] for name in names}
        pipe_cursor = 0
        for r in range(rounds + 1):  # round 0 warms every subject up and is not counted
            data = {kind: _round_data(kind, stores[kind, "daemon"].cursor, pending, per_round, values) for kind in IDS}
            got = {}
            for name in (names if r % 2 == 0 else names[::-1]):
                if name == "pipeline":
                    cpu = []
                    wall = bj._pairs(pipeline, pipe_cursor, pipeline_pending + pipe_cursor, pipeline_round, cpu)
                    pipe_cursor += pipeline_round
                    got[name] = {"cpu_us": cpu[0] / pipeline_round * 1e6, "wall_us": wall / pipeline_round * 1e6}
                    continue
                kind, what = name.split("/")
                if what in ("dict", "before_join"):
                    d = dicts[kind]
                    cpu, wall = (d.floor if what == "dict" else d.whole)(pending, per_round)
                    got[name] = {"cpu_us": cpu / per_round * 1e6, "wall_us": wall / per_round * 1e6}
                    continue
                spent = stores[kind, what].pairs(data[kind], per_round)
                got[name] = {k.replace("_cpu", "_cpu_us").replace("_wall", "_wall_us"): v / per_round * 1e6
                             for k, v in spent.items()}
                for m in ("cpu", "wall"):
                    got[name][f"{m}_us"] = sum(got[name][f"{c}_{m}_us"] for c in ("get", "batch", "write"))
            if r == 0:
                continue
            for name in names:
                detail[name].append(got[name])
            log(f"  round {r}/{rounds}: pipeline {got['pipeline']['cpu_us']:.2f} us per pair, "
                + ", ".join(f"{kind} dict {got[f'{kind}/dict']['cpu_us']:.2f}, "
                            f"RocksDB {got[f'{kind}/daemon']['cpu_us']:.2f}"
                            for kind in IDS) + " (thread CPU)")

    def med(name, key):
        return statistics.median(x[key] for x in detail[name])

    budgets = {m: [BUDGET_SHARE * x[f"{m}_us"] for x in detail["pipeline"]] for m in ("cpu", "wall")}
    out = {
        "what": "RocksDB's calls per labelled pair (a batched get of 2,000 present keys, one write batch of 2,000 "
                "puts and 2,000 deletes; RocksStore's options) over the join before the store's dict operations "
                "(OrderedDict insert + move_to_end, pop), against the budget the target leaves (0.2 x the pipeline's "
                "cost per pair with the join before the store)",
        "pending": pending, "batch": BATCH, "pairs_per_round": per_round, "rounds": rounds,
        "pipeline_pending": pipeline_pending, "pipeline_pairs_per_round": pipeline_round,
        "budget_share": BUDGET_SHARE, "value_bytes": len(values(pending)), "variants": VARIANTS,
        "pipeline_us": {m: med("pipeline", f"{m}_us") for m in ("cpu", "wall")},
        "budget_us": {m: statistics.median(budgets[m]) for m in ("cpu", "wall")},
        "ids": {},
    }
    for kind in IDS:
        d = dicts[kind]
        entry = {"dict_us": {m: med(f"{kind}/dict", f"{m}_us") for m in ("cpu", "wall")},
                 "before_join_us": {m: med(f"{kind}/before_join", f"{m}_us") for m in ("cpu", "wall")},
                 "dict_pending": len(d.join.predictions), "dict_missing": d.missing, "stores": {}}
        for variant in VARIANTS:
            s, name = stores[kind, variant], f"{kind}/{variant}"
            st = {f"{c}_us": {m: med(name, f"{c}_{m}_us") for m in ("cpu", "wall")} for c in ("get", "batch", "write")}
            st["rocks_us"] = {m: med(name, f"{m}_us") for m in ("cpu", "wall")}
            st["over_dict_us"] = {m: st["rocks_us"][m] - entry["dict_us"][m] for m in ("cpu", "wall")}
            for ref, key in (("dict", "ratio"), ("before_join", "over_join")):
                st[key] = {m: _median_ratio([x[f"{m}_us"] for x in detail[name]],
                                            [x[f"{m}_us"] for x in detail[f"{kind}/{ref}"]], budgets[m])
                           for m in ("cpu", "wall")}
            # the same of the rounds' means: it counts in what lands in one round only (the dict's table resize)
            st["ratio_of_means"] = {m: (_mean(detail[name], f"{m}_us") - _mean(detail[f"{kind}/dict"], f"{m}_us"))
                                    / (BUDGET_SHARE * _mean(detail["pipeline"], f"{m}_us")) for m in ("cpu", "wall")}
            st["ratio_range"] = [min(rs := [(x["cpu_us"] - d["cpu_us"]) / b for x, d, b in
                                            zip(detail[name], detail[f"{kind}/dict"], budgets["cpu"])]), max(rs)]
            st.update(entries=s.entries(), values_checked=s.checked, values_mismatched=s.mismatched,
                      options=s.options())
            entry["stores"][variant] = st
            s.store.close()
        out["ids"][kind] = entry
    # the headline: per id kind, the daemon's store, thread CPU (wall clock beside it)
    out["ratio"] = {kind: out["ids"][kind]["stores"]["daemon"]["ratio"] for kind in IDS}
    out["detail"] = detail
    for kind in IDS:
        e, s = out["ids"][kind], out["ids"][kind]["stores"]["daemon"]
        log(f"join_floor: {kind} ids, thread CPU per pair: dict {e['dict_us']['cpu']:.2f} us (the join before the "
            f"store {e['before_join_us']['cpu']:.2f}), RocksDB get {s['get_us']['cpu']:.2f} + batch "
            f"{s['batch_us']['cpu']:.2f} + write {s['write_us']['cpu']:.2f} = {s['rocks_us']['cpu']:.2f}; budget "
            f"{out['budget_us']['cpu']:.2f} (pipeline {out['pipeline_us']['cpu']:.2f}); ratio {s['ratio']['cpu']:.2f} "
            f"(wall {s['ratio']['wall']:.2f}; of the means {s['ratio_of_means']['cpu']:.2f}), over the whole join "
            f"{s['over_join']['cpu']:.2f}; tuned: "
            + ", ".join(f"{v} {e['stores'][v]['ratio']['cpu']:.2f}" for v in VARIANTS if v != "daemon"))
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.join_floor", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument("--pending", type=int, default=None, help="entries waiting (default 1,000,000)")
    parser.add_argument("--per-round", type=int, default=None, help="labelled pairs per subject and round (100,000)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds after the warm-up (default 9)")
    args = parser.parse_args(argv)
    print(json.dumps(run(args.quick, args.pending, args.per_round, args.rounds), default=float))


if __name__ == "__main__":
    main(sys.argv[1:])
