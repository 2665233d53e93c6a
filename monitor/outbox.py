"""A durable, capped on-disk outbox for notifications (SQLite, in the state directory).

A notification is written here, per sink, before anything tries to send it, so
a receiver that is down, or a daemon restart, loses nothing. Each sink's rows
are delivered strictly in insertion order, which keeps the order per dedup key.
The (sink, notification id) pair is unique, and delivered rows stay as
tombstones for a while: a window evaluated again after a crash re-creates the
same notification id, which is ignored rather than sent twice.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
import time

from monitor.state import WriteRetry

__all__ = ["Outbox"]

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sink TEXT NOT NULL,
    notification_id TEXT NOT NULL,
    alert TEXT NOT NULL,
    payload TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    delivered INTEGER NOT NULL DEFAULT 0,
    UNIQUE (sink, notification_id)
);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (sink, delivered, id);
"""

#: Delivered rows kept as tombstones, so a notification re-created after a crash is recognized.
KEEP_DELIVERED = 10_000


class Outbox:
    """Pending notifications per sink.

    Parameters
    ----------
    path : str
        SQLite file; created if missing.
    max_pending : int
        Cap on pending rows over all sinks; a notification enqueued at the cap is dropped,
        counted in :attr:`dropped` and logged.
    """

    def __init__(self, path: str, max_pending: int = 10_000):
        self.path = path
        self.max_pending = max_pending
        self.dropped = 0
        self.writes = WriteRetry("the outbox")  # failed writes (a full disk); callers retry later
        self._lock = threading.Lock()
        # One connection shared by the daemon's threads, serialized by the lock.
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._last_pending = self._count_pending()

    def put(self, sinks: list[str], notification: dict) -> int:
        """Enqueue one notification for each sink; returns how many rows were added."""
        body = json.dumps(notification, sort_keys=True, allow_nan=False)
        added = 0
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                pending = self._db.execute("SELECT COUNT(*) FROM outbox WHERE delivered = 0").fetchone()[0]
                for sink in sinks:
                    if pending >= self.max_pending:
                        self.dropped += 1
                        log.error("outbox full (%d pending): dropped %s notification %s for sink %s",
                                  pending, notification["alert"], notification["notification_id"], sink)
                        continue
                    cur = self._db.execute(
                        "INSERT OR IGNORE INTO outbox (sink, notification_id, alert, payload, created) "
                        "VALUES (?, ?, ?, ?, ?)",
                        (sink, notification["notification_id"], notification["alert"], body, time.time()))
                    added += cur.rowcount
                    pending += cur.rowcount
                self._db.execute("COMMIT")
                self._last_pending = pending
            except BaseException as exc:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    self.writes.failed(exc)
                raise
            self.writes.ok()
        return added

    def head(self, sink: str) -> tuple[int, dict, int, float] | None:
        """The oldest pending row of a sink: (row id, notification, attempts, next attempt time)."""
        with self._lock:
            row = self._db.execute(
                "SELECT id, payload, attempts, next_attempt FROM outbox WHERE sink = ? AND delivered = 0 "
                "ORDER BY id LIMIT 1",
                (sink,)).fetchone()
        if row is None:
            return None
        return row[0], json.loads(row[1]), row[2], row[3]

    def done(self, row_id: int) -> None:
        with self._lock, self._writing():
            self._db.execute("UPDATE outbox SET delivered = 1 WHERE id = ?", (row_id,))
            self._last_pending = self._count_pending()
            if row_id % 1000 == 0:
                self._db.execute("DELETE FROM outbox WHERE delivered = 1 AND id < ?", (row_id - KEEP_DELIVERED,))

    def retry_later(self, row_id: int, next_attempt: float) -> None:
        with self._lock, self._writing():
            self._db.execute("UPDATE outbox SET attempts = attempts + 1, next_attempt = ? WHERE id = ?",
                             (next_attempt, row_id))

    @contextlib.contextmanager
    def _writing(self):
        try:
            yield
        except sqlite3.Error as exc:
            self.writes.failed(exc)
            raise
        self.writes.ok()

    def pending_keys(self, sink: str) -> set[str]:
        """Dedup keys of a sink's pending notifications."""
        with self._lock:
            rows = self._db.execute("SELECT payload FROM outbox WHERE sink = ? AND delivered = 0", (sink,)).fetchall()
        return {json.loads(r[0])["dedup_key"] for r in rows}

    def undelivered(self) -> list[dict]:
        """Notifications some sink has not acknowledged yet, oldest first, each once (scale-out keeps them
        in the aggregator's changelog, so a new aggregator on another pod delivers them)."""
        with self._lock:
            rows = self._db.execute("SELECT payload FROM outbox WHERE delivered = 0 ORDER BY id").fetchall()
        out, seen = [], set()
        for (payload,) in rows:
            note = json.loads(payload)
            if note["notification_id"] not in seen:
                seen.add(note["notification_id"])
                out.append(note)
        return out

    def _count_pending(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM outbox WHERE delivered = 0").fetchone()[0]

    def pending_now(self) -> int:
        """Pending notifications, without waiting: while a write (an fsync on a slow or full disk) holds the
        database, the count after the last completed write (every write updates it, so it never reads a
        count from before a notification was added or delivered)."""
        if self._lock.acquire(blocking=False):
            try:
                self._last_pending = self._count_pending()
            finally:
                self._lock.release()
        return self._last_pending

    def pending(self, sink: str | None = None) -> int:
        with self._lock:
            if sink is None:
                return self._db.execute("SELECT COUNT(*) FROM outbox WHERE delivered = 0").fetchone()[0]
            return self._db.execute("SELECT COUNT(*) FROM outbox WHERE sink = ? AND delivered = 0",
                                    (sink,)).fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()
