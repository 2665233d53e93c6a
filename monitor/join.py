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
from collections import Counter, OrderedDict, deque
from itertools import islice
from operator import itemgetter

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

# key prefixes, in this order: live counts, entries, layout, meta, expiry index, undo records, (end)
_COUNT, _ENTRY, _FORMAT, _META, _TIME, _UNDO, _END = b"c", b"e", b"f", b"m", b"t", b"u", b"v"
_U64 = struct.Struct(">Q")
_F64 = struct.Struct(">d")
_ZERO = _U64.pack(0)
_SIGN = np.uint64(0x8000000000000000)
#: The layout of keys, values and undo records (``f``). 3: one expiry-index record per write batch.
FORMAT = b"3"
_NO_TIME = 2  # in a value's kind byte: the entry has no event time (it waits a TTL from the watermark)
_KIND_BYTES = tuple(bytes([k]) for k in range(4))
_HEAD = 25  # a value's header: expiry key (8), kind (1), batch id (16)
_BATCH, _PAYLOAD = itemgetter(slice(9, _HEAD)), itemgetter(slice(_HEAD, None))
_HEADER = itemgetter(slice(0, _HEAD))


def _time_ints(values) -> np.ndarray:
    """The floats as uint64s that sort like them (IEEE 754 with the sign bit flipped, negatives inverted)."""
    u = np.asarray(values, dtype=np.float64).view(np.uint64)
    return np.where(u >> np.uint64(63), ~u, u | _SIGN)


def _time_key(t: float) -> bytes:
    """8 bytes that sort like the float ``t``."""
    u = _U64.unpack(_F64.pack(t))[0]  # (struct, not numpy: expiry asks for one after every label batch)
    return _U64.pack(u ^ 0xFFFFFFFFFFFFFFFF if u >> 63 else u | 0x8000000000000000)


def _batch_counts(heads: np.ndarray) -> dict:
    """Batch id -> how many of these value headers (rows of :data:`_HEAD` bytes) name it: one entry per run of
    equal ids (rows from one write batch come together), in numpy rather than a slice and a count per row."""
    ids = np.ascontiguousarray(heads[:, 9:_HEAD]).view(np.uint64)  # (n, 2): compared as 16 bytes
    starts = np.flatnonzero(np.concatenate(([True], (ids[1:] != ids[:-1]).any(axis=1))))
    counts: dict = {}
    for b, k in zip(map(bytes, heads[starts, 9:_HEAD]), np.diff(np.append(starts, len(heads))).tolist()):
        counts[b] = counts.get(b, 0) + k
    return counts


def _ints(keys: bytes) -> np.ndarray:
    """Concatenated 8-byte time keys as uint64s."""
    return np.frombuffer(keys, dtype=">u8").astype(np.uint64)


def _times(keys: bytes) -> np.ndarray:
    """The floats of concatenated 8-byte time keys (the inverse of :func:`_time_key`)."""
    u = _ints(keys)
    return np.where(u >> np.uint64(63), u & ~_SIGN, ~u).view(np.float64)


def _split8(blob: bytes) -> list[bytes]:
    return [blob[i:i + 8] for i in range(0, len(blob), 8)]


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


class _Filter:
    """A bloom filter over stored entry keys: a superset of them (no false negatives), in a numpy array.

    Blocked: a key's three bits are in one 64-bit word (one read to test it, one to set it), all taken
    from Python's ``hash()`` of its bytes (randomized per process; the filter is rebuilt per process).
    Nothing is ever removed: a key deleted from the store stays a false positive (a lookup) until the next
    rebuild. ``capacity``: the keys it was sized for, at least :data:`BITS` bits each (words: a power of
    two); :meth:`full` once more than that were added since it was built.
    """

    # per key at capacity (3-6 after rounding up to a power of two): 6-25% false positives there, 1-6% at
    # half of it; 3 rather than 6 keeps 16 MiB off the daemon's RSS at 10,000,000 pending (267 vs 280 MiB peak)
    BITS = 3

    def __init__(self, capacity: int):
        self.capacity = capacity
        words = 1 << max(0, (capacity * self.BITS - 1) // 64).bit_length()
        self.words = np.zeros(words, dtype=np.uint64)
        self.mask = np.uint64(words - 1)
        self.added = 0

    def _locate(self, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each key's word, and its bits in that word (from bits 40-57 of the hash: the word uses at most 32)."""
        h = hashes.view(np.uint64)
        six, one = np.uint64(63), np.uint64(1)
        bits = (one << ((h >> np.uint64(40)) & six)) | (one << ((h >> np.uint64(46)) & six)) \
            | (one << ((h >> np.uint64(52)) & six))
        return h & self.mask, bits

    def add(self, hashes: np.ndarray) -> None:
        word, bits = self._locate(hashes)
        np.bitwise_or.at(self.words, word, bits)
        self.added += len(hashes)

    def may_hold(self, hashes: np.ndarray) -> np.ndarray:
        word, bits = self._locate(hashes)
        return (self.words[word] & bits) == bits

    def full(self) -> bool:
        return self.added > self.capacity


def _hashes(keys: list) -> np.ndarray:
    return np.fromiter(map(hash, keys), dtype=np.int64, count=len(keys))


def _plain(obj):
    """numpy scalars in waiting rows (a numeric column's values) as Python numbers."""
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"cannot store a {type(obj).__name__} in the label join")


class RocksStore:
    """Pending entries in RocksDB, with an undo log per epoch, so that the store rolls back to any checkpoint.

    Keys: ``e<id>`` an entry; ``t<time><batch>`` the expiry index of one write batch (the ids it
    stored, by expiry time; ``<time>`` is the earliest); ``c<batch>`` that record's time and how
    many of the entries its batch stored are still there; ``u<batch>`` the undo record of a batch
    (the keys it created, and the values of those it changed or deleted); ``m`` the last committed
    epoch; ``f`` the layout (:data:`FORMAT`). A batch is named ``<epoch><seq>`` (16 bytes).

    An entry's value is its expiry time as 8 bytes that sort like the float (:func:`_time_key`), its
    kind (one byte, plus 2 when it has no event time; else its event time is its expiry time), the
    batch that stored it, then its payload in msgpack: a lookup tells a waiting partner from a
    duplicate without decoding. A prediction's id is looked up only when an in-memory filter of the
    stored ids (:class:`_Filter`, a superset of them) says it may be stored: labels come later, so
    most predictions are stored without a lookup. A match deletes the entry alone: the index record still names it
    until expiry (or eviction) reads the record and finds it gone, or until the last entry the
    record's batch stored is gone (its count reaches zero, which deletes the record). Expiry and
    eviction delete an entry through the record of the batch that stored it, so each is counted
    once. A batch and its undo record are one write.

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
        The block cache. With the write buffers (2 x 16 MiB), the bloom filters (about
        1.3 bytes per key) and the filter of stored ids (0.5-3 bytes per entry, at least 2 MiB;
        16 MiB at 10,000,000) it bounds the store's memory.
    """

    #: The id filter's least capacity in ids (2 MiB; a 10,000,000-entry store's takes 16 MiB).
    filter_min = 1 << 21

    def __init__(self, path: str, cache_mib: int = 32):
        self.path = path
        self.cache_mib = cache_mib
        self._encode = msgspec.msgpack.Encoder(enc_hook=_plain).encode
        self._decode = msgspec.msgpack.Decoder().decode
        self.db = None
        self.rebuilds = 0  # of the filter of stored ids (bench.join's churn child reads it)
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
        self.floor = _ZERO  # every index record below it is gone (expired)
        self._seq = 0
        layout = self.db.get(_FORMAT)
        if layout is None and not self.committed() and not self.entries_exist():  # a new store
            _io(self.db.put, _FORMAT, FORMAT, self._write)
            layout = FORMAT
        self.layout = layout
        self.filter = None  # built at first use (after restore() set the count)

    def _ids(self) -> _Filter:
        """The filter of stored ids (a superset of them)."""
        if self.filter is None:
            self._rebuild()
        return self.filter

    def _rebuild(self) -> None:
        """Build the filter from the entries' keys, 100,000 at a time (0.3 s per million here), sized for four
        times the count: at first use, after a rollback (which puts deleted entries back), and once it is
        full (growth, or churn: deleted ids stay in it). With the store's size steady, that is a scan of
        its keys per three times as many entries stored: about 0.1 us per entry stored."""
        from rocksdict import ReadOptions

        self.rebuilds += 1
        capacity = max(4 * self.count, self.filter_min)
        while True:
            ro = ReadOptions()
            ro.set_iterate_upper_bound(_FORMAT)
            filt, hashes = _Filter(capacity), map(hash, self.db.keys(from_key=_ENTRY, read_opt=ro))
            while len(chunk := np.fromiter(islice(hashes, 100_000), dtype=np.int64)):
                filt.add(chunk)
            if not filt.full():
                break
            capacity = 4 * filt.added  # (more entries than the count says: not after a restore)
        self.filter = filt

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
        it = float(_times(raw[:8])[0])
        return [math.nan if raw[8] & _NO_TIME else it, raw[8] & 1, self._decode(raw[_HEAD:]), it]

    def get_many(self, keys: list[str]) -> list:
        if not keys:
            return []
        return [None if v is None else self._value(v) for v in self.db.get(_byte_keys("e", keys))]

    def _bid(self) -> bytes:
        """The name of the next write batch."""
        return _U64.pack(self.epoch) + _U64.pack(self._seq + 1)

    def join(self, keys: list, times: list[float], payloads: list, kind: int, watermark: float,
             ttl: float) -> tuple[list, int, int, float]:
        """:meth:`LabelJoin._join` on this store, in one write batch: a waiting partner is taken (matched),
        anything else waits (or is expired at once when older than the TTL).

        Returns the matches, how many there were, how many expired at once, and the new watermark.
        Nothing changes on this store's side (count, sequence) unless the write lands.
        """
        n = len(keys)
        if not n:
            return [], 0, 0, watermark
        eks = _byte_keys("e", keys)
        if kind == PREDICTION:  # labels come later: most predictions' ids are not stored, and the filter says so
            hashes = _hashes(eks)
            may = self._ids().may_hold(hashes)
            if may.all():
                raws = self.db.get(eks)
            else:
                raws = [None] * n
                if may.any():
                    look = np.flatnonzero(may).tolist()
                    for i, raw in zip(look, self.db.get([eks[i] for i in look])):
                        raws[i] = raw
        else:  # (a label batch: its predictions are stored, mostly)
            hashes = None
            raws = self.db.get(eks)
        t = np.asarray(times, dtype=np.float64)
        marks = np.fmax.accumulate(np.concatenate(([watermark], t)))  # the watermark before each row, then after
        before = marks[:-1]
        no_time = np.isnan(t)
        timeless = bool(no_time.any())
        expiry = np.where(no_time, before, t) if timeless else t  # without an event time: a TTL from the latest
        stale = expiry < before - ttl  # older than the TTL already: it would expire at once
        u = _time_ints(expiry)
        bid = self._bid()
        heads = (_KIND_BYTES[kind] + bid, _KIND_BYTES[kind | _NO_TIME] + bid)
        encode = self._encode
        if len(set(eks)) == n:
            missing = raws.count(None)
            if missing == n:
                match = []
            elif missing == 0:  # every id is stored: the kinds from the headers, in one call
                headers = np.frombuffer(b"".join(map(_HEADER, raws)), dtype=np.uint8).reshape(n, _HEAD)
                partner = (headers[:, 8] & 1) != kind
                match = range(n) if partner.all() else np.flatnonzero(partner).tolist()
            else:
                match = [i for i, raw in enumerate(raws) if raw is not None and raw[8] & 1 != kind]
            if len(match) == n:  # (the common label batch: every prediction waits)
                ins_eks, ins_u, ins_p, ins_nan, over, ins_h = [], u[:0], [], no_time[:0], [], None
                gone, dels, mine, mine_t = raws, eks, payloads, t
                old_keys, old_vals = eks, raws
            else:
                if match or stale.any():
                    keep = ~stale
                    keep[match] = False
                    ins = np.flatnonzero(keep)
                    if n - missing > len(match):
                        keep = keep.tolist()
                        over = [i for i, raw in enumerate(raws) if raw is not None and keep[i]]  # replaced
                    else:
                        over = []
                else:  # (the common prediction batch: every row is stored)
                    ins = None
                    over = [] if missing == n else [i for i, raw in enumerate(raws) if raw is not None]
                if ins is None or len(ins) == n:
                    ins_eks, ins_u, ins_p, ins_nan, ins_h = eks, u, payloads, no_time, hashes
                else:
                    pick = ins.tolist()
                    ins_eks, ins_u, ins_p, ins_nan = [eks[i] for i in pick], u[ins], [payloads[i] for i in pick], \
                        no_time[ins]
                    ins_h = None if hashes is None else hashes[ins]
                gone = [raws[i] for i in match]
                dels = [eks[i] for i in match]
                old_keys, old_vals = dels + [eks[i] for i in over], gone + [raws[i] for i in over]
                mine = [payloads[i] for i in match]
                mine_t = t[match]
            if ins_eks:
                tks = _split8(ins_u.astype(">u8").tobytes())
                if timeless:
                    values = [tk + heads[x] + encode(p) for tk, x, p in zip(tks, ins_nan.tolist(), ins_p)]
                else:
                    head = heads[0]
                    values = [tk + head + encode(p) for tk, p in zip(tks, ins_p)]
            else:
                values = []
            expired = n - len(ins_eks) - len(gone)
        else:  # an id twice in one batch: the later sees the earlier
            final: dict = {}  # ek -> (value or None, time int) after the batch
            first: dict = {}  # ek -> its value before the batch
            gone, mine, mine_t, expired = [], [], [], 0
            match = ()
            for i, (ek, raw) in enumerate(zip(eks, raws)):
                if ek in first:
                    raw = final[ek][0] if ek in final else first[ek]
                else:
                    first[ek] = raw
                if raw is not None and raw[8] & 1 != kind:
                    final[ek] = (None, 0)
                    gone.append(raw)
                    mine.append(payloads[i])
                    mine_t.append(times[i])
                elif stale[i]:
                    expired += 1
                else:
                    final[ek] = (u[i:i + 1].astype(">u8").tobytes() + heads[int(no_time[i])] + encode(payloads[i]),
                                 u[i])
            ins_eks, values, ins_u, dels, old_keys, old_vals = [], [], [], [], [], []
            for ek, (value, ui) in final.items():
                if value is None:
                    dels.append(ek)
                else:
                    ins_eks.append(ek)
                    values.append(value)
                    ins_u.append(ui)
                if first[ek] is not None:
                    old_keys.append(ek)
                    old_vals.append(first[ek])
            ins_u = np.array(ins_u, dtype=np.uint64)
            mine_t = np.array(mine_t, dtype=np.float64)
            ins_h = None
        out: list = []
        counts = None
        if mine:
            others = list(map(self._decode, map(_PAYLOAD, gone)))
            if len(match) != n:
                headers = np.frombuffer(b"".join(map(_HEADER, gone)), dtype=np.uint8).reshape(-1, _HEAD)
            if len(old_vals) == len(gone):  # (nothing replaced: the batches' counts fall by the matches alone)
                counts = _batch_counts(headers)
            heads9 = headers[:, :9]
            waited = _times(heads9[:, :8].tobytes())
            timeless_waited = heads9[:, 8] & _NO_TIME
            if timeless_waited.any():
                waited[timeless_waited.astype(bool)] = np.nan
            d = mine_t - waited if kind == LABEL else waited - mine_t
            delays = np.where(d > 0, d, 0.0).tolist()  # (0 when either time is missing)
            out = list(zip(others, mine, delays)) if kind == LABEL else list(zip(mine, others, delays))
        self._store(ins_eks, ins_u, values, dels, old_keys, old_vals, bid, counts, ins_h)
        return out, len(mine), expired, float(marks[-1])

    def apply(self, changes: dict, old: dict) -> None:
        """Write a batch: id -> new entry, or None to delete (``old``: what the store held before)."""
        keys = list(changes)
        if not keys:
            return
        eks = _byte_keys("e", keys)
        bid = self._bid()
        ins_eks, values, ins_u, dels, old_keys, old_vals = [], [], [], [], [], []
        for key, ek, raw in zip(keys, eks, self.db.get(eks)):
            new = changes[key]
            if raw is not None:
                old_keys.append(ek)
                old_vals.append(raw)
            if new is None:
                if raw is not None:
                    dels.append(ek)
                continue
            t, kind, payload, it = new
            ui = _time_ints([it])
            ins_eks.append(ek)
            ins_u.append(ui[0])
            values.append(ui.astype(">u8").tobytes() + _KIND_BYTES[kind | (0 if t == t else _NO_TIME)] + bid
                          + self._encode(payload))
        self._store(ins_eks, np.array(ins_u, dtype=np.uint64), values, dels, old_keys, old_vals, bid)

    def _store(self, ins_eks: list, ins_u: np.ndarray, values: list, dels: list, old_keys: list, old_vals: list,
               bid: bytes, counts: dict | None = None, hashes: np.ndarray | None = None) -> None:
        """One write batch: the entries stored (with the batch's index record and count) and deleted; the
        counts of the batches whose entries were replaced or deleted (``old_vals``: what they held).
        ``hashes``: of ``ins_eks``, when the caller has them."""
        if not ins_eks and not old_keys:
            return
        wb = self._batch()
        put = wb.put
        deque(map(wb.delete, dels), 0)
        deque(map(put, ins_eks, values), 0)
        created = ins_eks
        floor = self.floor
        if ins_eks:
            if len(ins_u) > 1 and not (ins_u[1:] >= ins_u[:-1]).all():
                order = np.argsort(ins_u, kind="stable")
                ins_u, refs = ins_u[order], [ins_eks[i] for i in order.tolist()]
            else:
                refs = ins_eks
            blob = ins_u.astype(">u8").tobytes()
            record = _TIME + blob[:8] + bid
            put(record, self._encode([blob, refs]))
            put(_COUNT + bid, blob[:8] + _U64.pack(len(refs)))
            created = ins_eks + [record, _COUNT + bid]
            floor = min(floor, blob[:8])  # (expiry never stores below the floor: a safeguard)
        count = self.count + len(ins_eks) - len(old_keys)  # (old_keys: entries replaced or deleted)
        if old_vals:
            old_keys, old_vals = list(old_keys), list(old_vals)
            self._release(wb, Counter(map(_BATCH, old_vals)) if counts is None else counts, old_keys, old_vals)
        self._land(wb, created, old_keys, old_vals, count, ins_eks + dels if dels else ins_eks)
        self.floor = floor
        filt = self.filter
        if ins_eks and filt is not None:  # (None: it will read the store, this write included)
            if filt.full():
                self.filter = None
            else:
                filt.add(_hashes(ins_eks) if hashes is None else hashes)

    def _release(self, wb, counts: Counter, old_keys: list, old_vals: list) -> None:
        """Lower the live counts of these batches (batch -> entries of it gone); a record whose count reaches
        zero goes. The keys changed and their former values are appended to ``old_keys``, ``old_vals``."""
        ckeys = [_COUNT + b for b in counts]
        for (b, k), ck, cv in zip(counts.items(), ckeys, self.db.get(ckeys)):
            if cv is None:
                continue
            old_keys.append(ck)
            old_vals.append(cv)
            left = _U64.unpack_from(cv, 8)[0] - k
            if left > 0:
                wb.put(ck, cv[:8] + _U64.pack(left))
                continue
            wb.delete(ck)
            record = _TIME + cv[:8] + b
            raw = self.db.get(record)
            if raw is not None:
                wb.delete(record)
                old_keys.append(record)
                old_vals.append(raw)

    def _land(self, wb, created: list, old_keys: list, old_vals: list, count: int, touched: list) -> None:
        """Write a batch with its undo record: the keys it created (deleted on undo), then the former values
        of the keys it changed or deleted (put back). ``touched``: the entry keys it changed."""
        wb.put(_UNDO + self._bid(), self._encode([created, old_keys, old_vals]))
        _io(self.db.write, wb, self._write)  # a full disk: RocksDB then refuses writes until reopened
        self._seq += 1
        self.count = count

    def _records(self, upper: bytes, refs: int) -> list:
        """Index records from the floor to ``upper`` (exclusive), earliest first, until they name ``refs``
        ids: ``[key, value, times (uint64s), ids]``."""
        it, _ro = self._read(_TIME + self.floor, _TIME + upper)
        it.seek(_TIME + self.floor)
        out, named = [], 0
        while it.valid() and named < refs:
            value = it.value()
            blob, ids = self._decode(value)
            out.append([it.key(), value, _ints(blob), ids])
            named += len(ids)
            it.next()
        del it
        return out

    def _take(self, records: list, takes: list[int]) -> int:
        """Take the first ``takes[r]`` ids of record ``r`` off it (the record moves to its next time, or goes),
        deleting the entries that its batch stored and that are still there. Returns how many."""
        named, owner = [], []
        for r, (_key, _value, _us, ids) in enumerate(records):
            named += ids[:takes[r]]
            owner += [r] * takes[r]
        wb = self._batch()
        created, old_keys, old_vals = [], [], []
        dropped = [0] * len(records)
        for ek, raw, r in zip(named, self.db.get(named) if named else [], owner):
            if raw is not None and raw[9:_HEAD] == records[r][0][9:]:  # stored by this record's batch
                wb.delete(ek)
                old_keys.append(ek)
                old_vals.append(raw)
                dropped[r] += 1
        touched = list(old_keys)
        ckeys = [_COUNT + key[9:] for key, _value, _us, _ids in records]
        for (key, value, us, ids), k, ck, cv, gone in zip(records, takes, ckeys, self.db.get(ckeys), dropped):
            if not k:
                continue
            wb.delete(key)
            old_keys.append(key)
            old_vals.append(value)
            left = 0
            if cv is not None:
                old_keys.append(ck)
                old_vals.append(cv)
                left = _U64.unpack_from(cv, 8)[0] - gone
            if left > 0 and k < len(ids):
                rest = us[k:].astype(">u8").tobytes()
                moved = _TIME + rest[:8] + key[9:]
                wb.put(moved, self._encode([rest, ids[k:]]))
                wb.put(ck, rest[:8] + _U64.pack(left))
                created.append(moved)
            elif cv is not None:
                wb.delete(ck)
        total = sum(dropped)
        self._land(wb, created, old_keys, old_vals, self.count - total, touched)
        return total

    def expire(self, horizon: float) -> int:
        upper = _time_key(horizon)
        if upper <= self.floor:
            return 0
        bound = _ints(upper)[0]
        dropped = 0
        while True:
            records = self._records(upper, 20_000)
            if not records:
                break
            # every record read moves past the horizon or goes, so the next read starts after them
            dropped += self._take(records, [int(us.searchsorted(bound)) for _k, _v, us, _i in records])
        self.floor = upper  # later arrivals older than this are never stored (see LabelJoin._join)
        return dropped

    def evict(self, n: int) -> int:
        """Drop the ``n`` oldest entries by expiry time."""
        dropped = 0
        while dropped < n:
            need = n - dropped
            it, _ro = self._read(_TIME + self.floor, _UNDO)
            it.seek(_TIME + self.floor)
            records, cutoff, named = [], None, 0
            while it.valid() and not (cutoff is not None and it.key()[1:9] > cutoff):
                value = it.value()
                blob, ids = self._decode(value)
                records.append([it.key(), value, _ints(blob), ids])
                named += len(ids)
                if named >= need:  # the need-th earliest so far; any record that starts later has none earlier
                    cutoff = _U64.pack(int(np.partition(np.concatenate([r[2] for r in records]), need - 1)[need - 1]))
                it.next()
            del it
            if not records:
                break
            us = np.concatenate([r[2] for r in records])
            owner = np.repeat(np.arange(len(records)), [len(r[3]) for r in records])
            earliest = np.argsort(us, kind="stable")[:need]  # (a prefix of each record: each is sorted)
            dropped += self._take(records, np.bincount(owner[earliest], minlength=len(records)).tolist())
        return dropped

    def commit(self) -> dict:
        """Make everything written so far durable; return the position that names it."""
        epoch = self.epoch
        _io(self.db.put, _META, _U64.pack(epoch), self._write)
        _io(self.db.flush_wal, True)  # one fsync, however many entries wait
        self.epoch += 1
        self._seq = 0
        return {"store": "rocksdb", "epoch": epoch, "pending": self.count, "floor": self.floor.hex()}

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
        it.seek_to_last()  # the newest batch first: in one write batch, the last write to a key wins
        wb, undone = self._batch(), 0
        while it.valid() and it.key() >= start:  # (the lower bound does not stop a backward walk)
            created, old_keys, old_vals = self._decode(it.value())
            for key in created:
                wb.delete(key)
            for key, value in zip(old_keys, old_vals):
                wb.put(key, value)
            undone += 1
            it.prev()
        del it
        wb.delete_range(start, _END)
        wb.put(_META, _U64.pack(epoch))
        _io(self.db.write, wb, self._write)
        _io(self.db.flush_wal, True)
        self.count = state["pending"]
        self.floor = bytes.fromhex(state["floor"])
        if undone:
            self.filter = None  # (the undo put deleted entries back)
        self.epoch = epoch + 1
        self._seq = 0
        if undone:
            log.info("label join store rolled back to the checkpoint's epoch %d (%d write batches undone)", epoch,
                     undone)

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
