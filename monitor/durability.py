"""The checkpoint-and-commit policy: when the state is durable, and which offsets may be committed."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable

from monitor.state import StateStore, WriteRetry

__all__ = ["CheckpointPolicy"]

log = logging.getLogger(__name__)


class CheckpointPolicy:
    """Checkpoints written off the consuming thread, and offsets committed only once they are durable.

    A snapshot is encoded under the owner's lock (the state shares lists with the live pipeline) and
    written outside it, so the consuming loop never waits for the disk; a checkpoint never replaces a
    newer one. Only offsets whose events are in a durable checkpoint are committed: a restart that
    finds no usable checkpoint resumes from the committed offsets and must not skip events.

    Parameters
    ----------
    store : StateStore
        Where checkpoints go.
    commit_seconds : float
        How often offsets are committed (``kafka.commit_interval``).
    positions : dict
        The restored positions ("topic:partition" -> next offset): durable already.
    """

    def __init__(self, store: StateStore, commit_seconds: float = 1.0, positions: dict | None = None):
        self.store = store
        self.commit_seconds = commit_seconds
        self.retry = WriteRetry("the checkpoint")  # a full or read-only disk: counted, retried with backoff
        self.changed = True  # state changed since the last snapshot
        self.checkpoints = 0  # checkpoints written
        self.durable_positions: dict[str, int] = dict(positions or {})
        self.committed: dict[str, int] = {}
        self.last_commit = 0.0  # time.monotonic() of the last commit attempt
        self._snapshots = 0  # snapshots taken
        self._saved = 0  # the newest snapshot on disk
        self._save_lock = threading.Lock()

    def checkpoint(self, lock, snapshot: Callable[[], tuple[dict, dict]], force: bool = False,
                   before: Callable[[], Callable[[], None] | None] | None = None,
                   on_durable: Callable[[dict], None] | None = None) -> bool:
        """Take a snapshot under ``lock`` and write it outside; True when the state as of this call is durable.

        ``snapshot()`` returns the state to write and its positions; ``before()`` runs first, under the lock,
        and may return a callable that runs outside it before the write (the dead letters of the records
        the snapshot covers are settled before their offsets can become durable); ``on_durable(state)``
        runs once the state is on disk (the label join drops the undo records it covers). A write that fails is
        counted and retried with backoff (``force`` tries at once); meanwhile nothing is committed past the
        last durable checkpoint, so a crash loses nothing either.
        """
        with lock:
            if not self.changed:
                with self._save_lock:  # waits for a save in flight on another thread
                    return self._saved >= self._snapshots  # the checkpoint on disk is current
            if not force and not self.retry.due():
                return False
            settle = before() if before is not None else None
            self.changed = False
            self._snapshots += 1
            seq = self._snapshots
            state, positions = snapshot()
            text = self.store.encode(state)
        if settle is not None:
            settle()  # outside the lock: /status and /metrics never wait for the broker
        with self._save_lock:
            if seq <= self._saved:
                return True  # a newer snapshot is on disk already
            try:
                self.store.save(text)
            except OSError as exc:
                self.changed = True  # still to be written
                self.retry.failed(exc)
                return False
            self.retry.ok()
            self._saved = seq
            self.checkpoints += 1
            self.durable_positions = dict(positions)
            if on_durable is not None:
                on_durable(state)
        return True

    @contextlib.contextmanager
    def holding(self):
        """No checkpoint is written meanwhile (the state is rewound to the one on disk)."""
        with self._save_lock:
            yield

    def restored(self, positions: dict[str, int]) -> None:
        """The state was rewound to the checkpoint on disk (call inside :meth:`holding`): its positions are
        durable, and the next checkpoint is written whatever happened to the snapshots since."""
        self.durable_positions = dict(positions)
        self.changed = True
        self._saved = self._snapshots

    def durable(self) -> dict[str, int]:
        """The positions of the newest durable checkpoint: what may be committed."""
        with self._save_lock:
            return dict(self.durable_positions)

    def commit_due(self) -> bool:
        return time.monotonic() - self.last_commit >= self.commit_seconds

    def commit(self, source, timeout_ms: int = 10_000, reachable: bool = True) -> None:
        """Commit the durable positions through ``source`` when they moved (a durable checkpoint was written
        after the dead letters it covers were settled, see :meth:`checkpoint`).

        ``reachable`` False (the broker is known to be down) skips the commit: it would only wait, and the
        next one after the broker is back covers these positions.
        """
        positions = self.durable()
        self.last_commit = time.monotonic()
        if positions == self.committed or not reachable:
            return
        try:
            source.commit(positions, timeout_ms=timeout_ms)
            self.committed = positions
        except Exception as exc:  # a rebalance in progress; the next commit covers it
            log.warning("offset commit failed: %s", exc)
        self.last_commit = time.monotonic()
