"""The late-label join: predictions wait for their labels by id (and labels that come first wait too).

Pending entries live in a store. :class:`MemoryStore` keeps them in a dict and
puts them whole into :meth:`LabelJoin.state_dict` (fine for thousands: tests,
replays, the benchmarks' reference). :class:`RocksStore`, the daemon's, keeps
them in RocksDB on the state volume, so that tens of millions of predictions
waiting days for their labels cost disk, not memory, and a checkpoint records a
position in the store (an epoch) rather than its contents. docs/DESIGN.md
("Pending label joins") says why RocksDB, and how the store maps onto a
changelog topic in scale-out mode.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import struct
from collections import OrderedDict

import msgspec
import numpy as np

__all__ = ["LabelJoin", "MemoryStore", "RocksStore", "StoreError"]

log = logging.getLogger(__name__)

PREDICTION, LABEL = 0, 1


class StoreError(OSError):
    """RocksDB refused a write or an open (a full or read-only disk). After a failed write it refuses every
    later one until it is reopened; the daemon then rolls the store back to its last durable checkpoint."""


def _io(call, *args):
    """Run a RocksDB write (or open); its errors (plain Exceptions from rocksdict) as :class:`StoreError`."""
    try:
        return call(*args)
    except Exception as exc:
        raise StoreError(str(exc)) from exc


class MemoryStore:
    """Pending entries in a dict, in arrival order; expiry and eviction take the oldest arrivals first.

    An entry is ``[t, kind, payload, it]``: the event time (may be NaN), :data:`PREDICTION` or
    :data:`LABEL`, the waiting row or label, and the time it expires by (``t``, or the
    join's watermark when ``t`` is NaN).
    """

    def __init__(self):
        self.entries: OrderedDict[str, list] = OrderedDict()

    def __len__(self) -> int:
        return len(self.entries)

    def get_many(self, keys: list[str]) -> list:
        get = self.entries.get
        return [get(k) for k in keys]

    def apply(self, changes: dict, old: dict) -> None:
        """Write a batch: id -> new entry, or None to delete (``old``: what the store held before)."""
        entries = self.entries
        for key, new in changes.items():
            if new is None:
                entries.pop(key, None)
            else:
                entries[key] = new
                entries.move_to_end(key)

    def expire(self, horizon: float) -> int:
        dropped, entries = 0, self.entries
        while entries and next(iter(entries.values()))[3] < horizon:
            entries.popitem(last=False)
            dropped += 1
        return dropped

    def evict(self, n: int) -> int:
        n = min(n, len(self.entries))
        for _ in range(n):
            self.entries.popitem(last=False)
        return n

    def commit(self) -> dict:
        return {"entries": [[k, *e] for k, e in self.entries.items()]}

    def durable(self, state: dict) -> None:
        pass

    def clear(self) -> None:
        self.entries.clear()

    def close(self) -> None:
        pass


# ---- RocksDB ---------------------------------------------------------------------------------------

_ENTRY, _FORMAT, _META, _TIME, _UNDO, _END = b"e", b"f", b"m", b"t", b"u", b"v"  # key prefixes, in this order
_U64 = struct.Struct(">Q")
_ZERO = _U64.pack(0)
#: The layout of values and undo records (``f``). 2: an entry's value starts with its 8-byte expiry key.
FORMAT = b"2"
_KINDS = (b"\x00", b"\x01")  # PREDICTION, LABEL as a value's kind byte


def _time_key(t: float) -> bytes:
    """8 bytes that sort like the float ``t`` (IEEE 754 with the sign bit flipped, negatives inverted)."""
    (u,) = _U64.unpack(struct.pack(">d", t))
    return _U64.pack(u ^ 0xFFFFFFFFFFFFFFFF if u >> 63 else u | 0x8000000000000000)


def _time_keys(values: list[float]) -> list[bytes]:
    """:func:`_time_key` of many floats at once."""
    if not values:
        return []
    u = np.asarray(values, dtype=np.float64).view(np.uint64)
    u = np.where(u >> np.uint64(63), ~u, u | np.uint64(0x8000000000000000)).astype(">u8").tobytes()
    return [u[i:i + 8] for i in range(0, len(u), 8)]


def _byte_keys(prefix: str, keys: list) -> list[bytes]:
    """``prefix`` + the UTF-8 of each key (``str()`` of a non-string), encoded in one call rather than one per key."""
    try:
        joined = prefix + ("\0" + prefix).join(keys)
    except TypeError:
        keys = [str(k) for k in keys]
        joined = prefix + ("\0" + prefix).join(keys)
    if joined.count("\0") != len(keys) - 1:  # an id with a NUL in it: one by one
        return [(prefix + k).encode() for k in keys]
    return joined.encode().split(b"\0")


def _plain(obj):
    """numpy scalars in waiting rows (a numeric column's values) as Python numbers."""
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"cannot store a {type(obj).__name__} in the label join")


class RocksStore:
    """Pending entries in RocksDB, with an undo log per epoch, so that the store rolls back to any checkpoint.

    Keys: ``e<id>`` an entry; ``t<time>e<id>`` the expiry index (by event time); ``u<epoch><seq>``
    the undo record of one batch of changes (per change: the entry's key, the value it replaced,
    the index time it wrote); ``m`` the last committed epoch; ``f`` the layout (:data:`FORMAT`).
    An entry's value is its 8-byte expiry time (:func:`_time_key`), its kind (one byte), then
    msgpack ``[t, payload, expiry]``: a lookup learns whether its partner waits, and a deletion
    finds the index key, without decoding. A batch and its undo record are one write.

    A checkpoint calls :meth:`commit`: the write-ahead log is synced (one fsync) and the
    checkpoint records the epoch, so its cost does not grow with the entries. A restart
    calls :meth:`restore` with the checkpoint it loaded and undoes every change made after
    it (after a kill -9 the store is ahead of the checkpoint by up to an epoch or two). Undo
    records go once a checkpoint that covers them is durable (:meth:`durable`): they hold
    about one checkpoint interval of changes.

    Parameters
    ----------
    path : str
        A directory (created if missing) that belongs to this store alone.
    cache_mib : int
        The block cache. With the write buffers (2 x 16 MiB) and the bloom filters (about
        1.3 bytes per key) it bounds the store's memory.
    """

    def __init__(self, path: str, cache_mib: int = 32):
        self.path = path
        self.cache_mib = cache_mib
        self._encode = msgspec.msgpack.Encoder(enc_hook=_plain).encode
        self._decode = msgspec.msgpack.Decoder().decode
        self.db = None
        self._open()

    def _open(self) -> None:
        from rocksdict import DBCompressionType, Options, Rdict, WriteOptions

        os.makedirs(self.path, exist_ok=True)
        options = Options(raw_mode=True)
        options.create_if_missing(True)
        options.optimize_for_point_lookup(self.cache_mib)  # bloom filters and a block cache of that size
        options.set_write_buffer_size(16 << 20)
        options.set_max_write_buffer_number(2)
        options.set_max_background_jobs(2)
        options.set_keep_log_file_num(2)
        options.set_max_log_file_size(1 << 20)
        # Uncompressed blocks: a lookup of a random id misses the cache and reads a block from the page cache;
        # without decompressing it the join took 15-20% less time per message (1,000,000 pending, random ids).
        options.set_compression_type(DBCompressionType.none())
        self.db = _io(Rdict, self.path, options)
        self._write = WriteOptions()  # batches are not synced one by one: commit() syncs the log
        self.count = 0
        self.epoch = 1  # the epoch being written; commit() closes it
        self.floor = _ZERO  # every index key below it is gone (expired)
        self.cursor = _ZERO  # where eviction at the cap goes on from
        self._seq = 0
        layout = self.db.get(_FORMAT)
        if layout is None and not self.committed() and not self.entries_exist():  # a new store
            _io(self.db.put, _FORMAT, FORMAT, self._write)
            layout = FORMAT
        self.layout = layout

    def __len__(self) -> int:
        return self.count

    def _batch(self):
        from rocksdict import WriteBatch

        return WriteBatch(raw_mode=True)

    def _read(self, lower: bytes, upper: bytes):
        from rocksdict import ReadOptions

        ro = ReadOptions()
        ro.set_iterate_lower_bound(lower)
        ro.set_iterate_upper_bound(upper)
        return self.db.iter(ro), ro  # the caller keeps ro alive while it iterates: the iterator borrows its bounds

    def _value(self, raw: bytes) -> list:
        """A stored value as the entry ``[t, kind, payload, expiry]``."""
        t, payload, it = self._decode(memoryview(raw)[9:])
        return [t, raw[8], payload, it]

    def _pack(self, entry: list, index: bytes) -> bytes:
        t, kind, payload, it = entry
        return index + _KINDS[kind] + self._encode([t, payload, it])

    def get_many(self, keys: list[str]) -> list:
        if not keys:
            return []
        return [None if v is None else self._value(v) for v in self.db.get(_byte_keys("e", keys))]

    def join(self, keys: list, times: list[float], payloads: list, kind: int, watermark: float,
             ttl: float) -> tuple[list, int, int, float]:
        """:meth:`LabelJoin._join` on this store, in one pass and one write batch: a waiting partner is
        taken (matched), anything else waits (or is expired at once when older than the TTL).

        Returns the matches, how many there were, how many expired at once, and the new watermark.
        Nothing changes on this store's side (count, sequence) unless the write lands.
        """
        if not keys:
            return [], 0, 0, watermark
        eks = _byte_keys("e", keys)
        raws = self.db.get(eks)
        tks = _time_keys(times)
        touched = {} if len(set(eks)) < len(eks) else None  # an id twice in one batch: the later sees the earlier
        wb, undo, out = self._batch(), [], []
        put, delete, encode, decode, record = wb.put, wb.delete, self._encode, self._decode, undo.append
        tag = _KINDS[kind]
        count, matched, expired, horizon = self.count, 0, 0, watermark - ttl
        for ek, t, payload, raw, tk in zip(eks, times, payloads, raws, tks):
            if touched is not None and ek in touched:
                raw = touched[ek]
            if raw is not None and raw[8] != kind:  # its partner waits
                waited, other, _ = decode(memoryview(raw)[9:])
                matched += 1
                count -= 1
                delete(ek)
                delete(_TIME + raw[:8] + ek)
                record((ek, raw, None))
                if touched is not None:
                    touched[ek] = None
                if kind == LABEL:
                    out.append((other, payload, max(0.0, t - waited)))
                else:
                    out.append((payload, other, max(0.0, waited - t)))
            else:
                if t == t:
                    it = t
                else:  # without an event time it waits a TTL from the latest
                    it, tk = watermark, _time_key(watermark)
                if it < horizon:
                    expired += 1  # older than the TTL already: it would expire at once
                else:
                    value = tk + tag + encode([t, payload, it])
                    if raw is None:
                        count += 1
                    else:
                        delete(_TIME + raw[:8] + ek)
                    put(ek, value)
                    put(_TIME + tk + ek, b"")
                    record((ek, raw, tk))
                    if touched is not None:
                        touched[ek] = value
            if t > watermark:  # (False for NaN)
                watermark = t
                horizon = t - ttl
        self._land(wb, undo, count)
        return out, matched, expired, watermark

    def apply(self, changes: dict, old: dict) -> None:
        """Write a batch: id -> new entry, or None to delete (``old``: what the store held before)."""
        keys = list(changes)
        eks = _byte_keys("e", keys)
        raws = dict(zip(keys, self.db.get(eks))) if keys else {}
        wb, undo, count = self._batch(), [], self.count
        for key, ek in zip(keys, eks):
            raw, new = raws[key], changes[key]
            if raw is None and new is None:
                continue
            if raw is not None:
                wb.delete(_TIME + raw[:8] + ek)
            if new is None:
                wb.delete(ek)
                index = None
            else:
                index = _time_key(new[3])
                wb.put(ek, self._pack(new, index))
                wb.put(_TIME + index + ek, b"")
            undo.append((ek, raw, index))
            count += (new is not None) - (raw is not None)
        self._land(wb, undo, count)

    def _land(self, wb, undo: list, count: int) -> None:
        """Write a batch with its undo record (when it changes anything)."""
        if not undo:
            return
        wb.put(_UNDO + _U64.pack(self.epoch) + _U64.pack(self._seq + 1), self._encode(undo))
        _io(self.db.write, wb, self._write)  # a full disk: RocksDB then refuses writes until reopened
        self._seq += 1
        self.count = count

    def _oldest(self, lower: bytes, upper: bytes, limit: int) -> list[bytes]:
        """Up to ``limit`` index keys (time + entry key) in [lower, upper), oldest first."""
        it, _ro = self._read(_TIME + lower, _TIME + upper)
        it.seek(_TIME + lower)
        out = []
        while it.valid() and len(out) < limit:
            out.append(it.key()[1:])
            it.next()
        del it
        return out

    def _drop(self, index_keys: list[bytes]) -> int:
        """Delete the entries these index keys name (each with its index key)."""
        if not index_keys:
            return 0
        eks = [k[8:] for k in index_keys]
        wb, undo, count = self._batch(), [], self.count
        for ek, raw in zip(eks, self.db.get(eks)):
            if raw is None:
                continue
            wb.delete(ek)
            wb.delete(_TIME + raw[:8] + ek)
            undo.append((ek, raw, None))
            count -= 1
        before = self.count
        self._land(wb, undo, count)
        return before - self.count

    def expire(self, horizon: float) -> int:
        upper = _time_key(horizon)
        if upper <= self.floor:
            return 0
        dropped, lower = 0, self.floor
        while True:
            keys = self._oldest(lower, upper, 10_000)
            dropped += self._drop(keys)
            if len(keys) < 10_000:
                break
            lower = keys[-1] + b"\x00"  # past the deletions just written
        self.floor = upper  # later arrivals older than this are never stored (see LabelJoin._join)
        self.cursor = max(self.cursor, upper)
        return dropped

    def evict(self, n: int) -> int:
        """Drop the ``n`` oldest entries by expiry time, from a cursor that moves past what it evicted
        (so that eviction at the cap does not walk over its own deletions again)."""
        keys = self._oldest(max(self.cursor, self.floor), b"\xff" * 9, n)
        if keys:
            self.cursor = keys[-1] + b"\x00"
        return self._drop(keys)

    def commit(self) -> dict:
        """Make everything written so far durable; return the position that names it."""
        epoch = self.epoch
        _io(self.db.put, _META, _U64.pack(epoch), self._write)
        _io(self.db.flush_wal, True)  # one fsync, however many entries wait
        self.epoch += 1
        self._seq = 0
        return {"store": "rocksdb", "epoch": epoch, "pending": self.count, "floor": self.floor.hex(),
                "cursor": self.cursor.hex()}

    def committed(self) -> int:
        meta = self.db.get(_META)
        return 0 if meta is None else _U64.unpack(meta)[0]

    def restore(self, state: dict) -> None:
        """Roll the store back to the checkpoint ``state`` (from :meth:`commit`)."""
        epoch = state["epoch"]
        if self.layout != FORMAT or self.committed() < epoch:
            why = (f"is older than the checkpoint (epoch {self.committed()} < {epoch})" if self.layout == FORMAT
                   else "was written by an older version of driftmon")
            log.error("the label join store %s %s: its %d pending entries are lost (was the state directory "
                      "restored in part?)", self.path, why, state["pending"])
            self.clear()
            self.epoch = epoch + 1
            return
        start = _UNDO + _U64.pack(epoch + 1)
        it, _ro = self._read(start, _END)
        it.seek_to_last()  # the newest batch first
        wb, undone = self._batch(), 0
        while it.valid() and it.key() >= start:  # (the lower bound does not stop a backward walk)
            for ek, old, index in reversed(self._decode(it.value())):
                if index is not None:
                    wb.delete(_TIME + index + ek)
                    wb.delete(ek)
                if old is not None:
                    wb.put(ek, old)
                    wb.put(_TIME + old[:8] + ek, b"")
                undone += 1
            it.prev()
        del it
        wb.delete_range(start, _END)
        wb.put(_META, _U64.pack(epoch))
        _io(self.db.write, wb, self._write)
        _io(self.db.flush_wal, True)
        self.count = state["pending"]
        self.floor = bytes.fromhex(state["floor"])
        self.cursor = bytes.fromhex(state["cursor"])
        self.epoch = epoch + 1
        self._seq = 0
        if undone:
            log.info("label join store rolled back to the checkpoint's epoch %d (%d changes undone)", epoch, undone)

    def durable(self, state: dict) -> None:
        """The checkpoint holding ``state`` is on disk: the undo records it covers can go."""
        _io(self.db.delete_range, _UNDO, _UNDO + _U64.pack(state["epoch"] + 1), self._write)

    def clear(self) -> None:
        from rocksdict import Options, Rdict

        self.close()
        _io(Rdict.destroy, self.path, Options(raw_mode=True))
        shutil.rmtree(self.path, ignore_errors=True)
        self._open()

    def entries_exist(self) -> bool:
        it, _ro = self._read(_ENTRY, _FORMAT)
        it.seek_to_first()
        found = it.valid()
        del it
        return found

    def entries(self) -> dict:
        """Every pending entry, id -> entry (for tests)."""
        it, _ro = self._read(_ENTRY, _FORMAT)
        it.seek(_ENTRY)
        out = {}
        while it.valid():
            out[it.key()[1:].decode()] = self._value(it.value())
            it.next()
        del it
        return out

    def close(self) -> None:
        if self.db is not None:
            try:
                self.db.close()
            except Exception as exc:  # a store that failed a write (full disk): the checkpoint has the state
                log.warning("label join store %s closed with an error: %s", self.path, exc)
            self.db = None


class LabelJoin:
    """Join predictions and labels by id, with a time-to-live by event time and a hard cap on pending entries.

    Expiry and eviction at the cap drop the oldest first (by event time in :class:`RocksStore`,
    by arrival in :class:`MemoryStore`). The counters and the store's position are in
    :meth:`state_dict` (JSON-safe), so the join survives a restart with the daemon's checkpoint.

    Parameters
    ----------
    ttl : float
        Seconds a prediction (or an early label) waits for its partner, by event time.
    max_pending : int
        Cap on waiting predictions plus waiting labels; past it the oldest are evicted (counted as expired).
    """

    def __init__(self, ttl: float, max_pending: int):
        self.ttl = ttl
        self.max_pending = max_pending
        self.store: MemoryStore | RocksStore = MemoryStore()
        self._unchecked = False  # an opened store waits for load_state_dict, or is cleared at first use
        self._reset()

    def _reset(self) -> None:
        self.received = 0
        self.matched = 0
        self.expired = 0
        self.watermark = -math.inf  # the latest event time seen

    def open(self, path: str, **options) -> "LabelJoin":
        """Keep pending entries in a :class:`RocksStore` at ``path`` (call before :meth:`load_state_dict`).

        A store that no checkpoint is loaded into is cleared at first use: without the
        checkpoint's counters and offsets its entries would be counted twice.
        """
        self.store.close()
        self.store = RocksStore(path, **options)
        self._unchecked = True
        return self

    def close(self) -> None:
        self.store.close()

    def _check(self) -> None:
        self._unchecked = False
        if self.store.committed() or self.store.entries_exist():
            log.warning("label join store %s cleared: no checkpoint names its state", self.store.path)
        self.store.clear()

    @property
    def pending(self) -> int:
        return len(self.store)

    def _join(self, ids, times, payloads, kind: int) -> list[tuple[list, object, float]]:
        if self._unchecked:
            self._check()
        if isinstance(self.store, RocksStore):  # one pass over the batch, one write
            out, matched, expired, watermark = self.store.join(ids, times, payloads, kind, self.watermark, self.ttl)
            self.matched += matched
            self.expired += expired
            self.watermark = watermark
            excess = len(self.store) - self.max_pending
            if excess > 0:
                self.expired += self.store.evict(excess)
            return out
        keys = [str(k) for k in ids]
        old = dict(zip(keys, self.store.get_many(keys)))
        changes: dict = {}
        out = []
        horizon = self.watermark - self.ttl
        for key, t, payload in zip(keys, times, payloads):
            current = changes[key] if key in changes else old[key]
            if current is not None and current[1] != kind:  # its partner waits
                self.matched += 1
                changes[key] = None
                if kind == LABEL:
                    out.append((current[2], payload, max(0.0, t - current[0])))
                else:
                    out.append((payload, current[2], max(0.0, current[0] - t)))
            else:
                it = t if t == t else self.watermark  # without an event time it waits a TTL from the latest
                if it < horizon:
                    self.expired += 1  # older than the TTL already: it would expire at once
                else:
                    changes[key] = [t, kind, payload, it]
            if t == t and t > self.watermark:  # NaN-safe
                self.watermark = t
                horizon = t - self.ttl
        self.store.apply(changes, old)
        excess = len(self.store) - self.max_pending
        if excess > 0:
            self.expired += self.store.evict(excess)
        return out

    def add_predictions(self, ids, times, rows) -> list[tuple[list, object, float]]:
        """Add predictions; return (row, label, delay seconds) for those whose label had already arrived."""
        return self._join(ids, times, rows, PREDICTION)

    def add_labels(self, ids, times, labels) -> list[tuple[list, object, float]]:
        """Add labels; return (row, label, delay seconds) for those whose prediction is waiting."""
        self.received += len(ids)
        return self._join(ids, times, labels, LABEL)

    def expire(self, now: float | None = None) -> int:
        """Drop entries older than the TTL (by event time, or ``now``); returns how many."""
        if self._unchecked:
            self._check()
        horizon = (self.watermark if now is None else now) - self.ttl
        if not horizon > -math.inf:  # nothing timed yet (or NaN)
            return 0
        dropped = self.store.expire(horizon)
        self.expired += dropped
        return dropped

    def state_dict(self) -> dict:
        """The counters and the store's position (a :class:`RocksStore` commits here), or, in memory, its entries."""
        if self._unchecked:
            self._check()
        return {
            "store": self.store.commit(),
            "received": self.received, "matched": self.matched, "expired": self.expired,
            "watermark": None if math.isinf(self.watermark) else self.watermark,
        }

    def load_state_dict(self, state: dict) -> "LabelJoin":
        self._reset()
        self._unchecked = False
        store = state.get("store")
        if store is None or "entries" in store:  # entries inline: from a MemoryStore, or from before stores
            if store is None:
                entries = [(k, t, PREDICTION, row, t) for k, t, row in state["predictions"]]
                entries += [(k, t, LABEL, label, t) for k, t, label in state["labels"]]
                entries.sort(key=lambda e: e[1] if e[1] == e[1] else -math.inf)
            else:
                entries = store["entries"]
            self.store.clear()
            self.store.apply({k: [t, kind, p, it] for k, t, kind, p, it in entries}, {})
        elif isinstance(self.store, MemoryStore):
            raise ValueError("the checkpoint's pending labels are in a RocksDB store: open() it first")
        else:
            self.store.restore(store)
        self.received, self.matched, self.expired = state["received"], state["matched"], state["expired"]
        self.watermark = -math.inf if state["watermark"] is None else state["watermark"]
        return self

    def durable(self, state: dict) -> None:
        """The checkpoint holding ``state`` (from :meth:`state_dict`) is on disk."""
        self.store.durable(state["store"])
