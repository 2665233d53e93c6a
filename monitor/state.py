"""Checkpoints and the window log, written atomically to the state directory (JSON, never pickle)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time

__all__ = ["StateStore", "WriteRetry"]

log = logging.getLogger(__name__)

CHECKPOINT_VERSION = 1


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class StateStore:
    """A state directory holding ``checkpoint.json``, ``windows.jsonl`` and ``performance.jsonl``.

    The checkpoint is replaced atomically (write, fsync, rename, fsync the
    directory), so a crash at any moment leaves either the old or the new one.
    The window log is append-only and deduplicated by window index: a window
    evaluated again after a crash (between its log line and the checkpoint that
    covers it) is not written twice.

    Parameters
    ----------
    directory : str
        Created if missing.
    fingerprint : str
        The baseline fingerprint; a checkpoint made against another baseline is not restored.
    max_log_bytes : int
        The window log is rotated to ``windows.jsonl.1`` past this size.
    """

    def __init__(self, directory: str, fingerprint: str, max_log_bytes: int = 64 << 20):
        self.directory = directory
        self.fingerprint = fingerprint
        self.max_log_bytes = max_log_bytes
        os.makedirs(directory, exist_ok=True)
        self.checkpoint_path = os.path.join(directory, "checkpoint.json")
        self.logs = {name: os.path.join(directory, f"{name}.jsonl") for name in ("windows", "performance")}
        self.last_logged = {name: self._last_logged_index(path) for name, path in self.logs.items()}

    def encode(self, state: dict) -> str:
        """The checkpoint document for a state (done under the caller's lock: the state may share live lists)."""
        doc = {"version": CHECKPOINT_VERSION, "baseline_fingerprint": self.fingerprint, "state": state}
        return json.dumps(doc, allow_nan=False, separators=(",", ":"))  # the C encoder; json.dump is pure Python

    def save(self, state: dict | str) -> None:
        """Write a checkpoint (a state, or the text of :meth:`encode`) atomically."""
        text = state if isinstance(state, str) else self.encode(state)
        tmp = self.checkpoint_path + ".tmp"
        try:
            _write_all(tmp, text.encode("utf-8"), os.O_TRUNC)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp)  # a full disk: give the partial copy's space back; the old checkpoint stays
            raise
        os.replace(tmp, self.checkpoint_path)
        _fsync_dir(self.directory)

    def load(self) -> dict | None:
        """The saved state, or None when there is none (or it belongs to another baseline)."""
        try:
            with open(self.checkpoint_path, encoding="utf-8") as fh:
                doc = json.load(fh)
        except FileNotFoundError:
            return None
        if doc.get("version") != CHECKPOINT_VERSION or doc.get("baseline_fingerprint") != self.fingerprint:
            return None
        return doc["state"]

    @property
    def log_path(self) -> str:
        return self.logs["windows"]

    @staticmethod
    def _last_logged_index(log_path: str) -> int:
        last = -1
        for path in (log_path + ".1", log_path):
            try:
                with open(path, "rb+") as fh:
                    data = fh.read()
                    end = data.rfind(b"\n") + 1
                    if end < len(data):
                        fh.truncate(end)  # a line torn by a crash mid-write
                    for line in data[:end].splitlines():
                        try:
                            last = max(last, json.loads(line)["window"]["index"])
                        except (ValueError, KeyError, TypeError):
                            continue
            except FileNotFoundError:
                continue
        return last

    def log_window(self, result: dict, log: str = "windows") -> bool:
        """Append a result to a log (``windows`` or ``performance``) unless its index is there; True if written."""
        index = result["window"]["index"]
        if index <= self.last_logged[log]:
            return False
        path = self.logs[log]
        line = json.dumps(result, sort_keys=True, allow_nan=False) + "\n"
        try:
            if os.path.getsize(path) + len(line) > self.max_log_bytes:
                os.replace(path, path + ".1")  # bounded disk: keep one old file
        except FileNotFoundError:
            pass
        _write_all(path, line.encode("utf-8"), os.O_APPEND)  # a failed append leaves no torn line behind
        self.last_logged[log] = index
        return True


def _write_all(path: str, data: bytes, mode: int) -> None:
    """Write ``data`` (truncating or appending) and fsync; on an error (ENOSPC, EROFS) cut the file back
    to its old size and raise, so that a retry appends after whole lines only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | mode, 0o644)
    try:
        size = os.fstat(fd).st_size if mode == os.O_APPEND else 0
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)
            raise
    finally:
        os.close(fd)


class WriteRetry:
    """Failures of one kind of state write (checkpoint, window log, outbox) and when to try again.

    Parameters
    ----------
    target : str
        What is written, for logs and metric labels.
    initial, maximum : float
        Seconds; after n failures in a row the next try waits min(maximum, initial * 2**(n-1)).
    clock : callable
        Monotonic seconds (for tests).
    """

    def __init__(self, target: str, initial: float = 0.5, maximum: float = 30.0, clock=time.monotonic):
        self.target = target
        self.initial = initial
        self.maximum = maximum
        self.clock = clock
        self.failures = 0  # ever
        self.consecutive = 0
        self.last_error: str | None = None
        self.last_success: float | None = None  # Unix time
        self.retry_at = 0.0

    @property
    def failing(self) -> bool:
        return self.consecutive > 0

    def due(self) -> bool:
        return self.clock() >= self.retry_at

    def ok(self) -> None:
        if self.consecutive:
            log.warning("%s written again after %d failed attempts", self.target, self.consecutive)
        self.consecutive = 0
        self.retry_at = 0.0
        self.last_success = time.time()

    def failed(self, exc: BaseException) -> None:
        self.failures += 1
        self.consecutive += 1
        self.last_error = f"{type(exc).__name__}: {exc}"
        wait = min(self.maximum, self.initial * 2 ** min(self.consecutive - 1, 30))
        self.retry_at = self.clock() + wait
        if self.consecutive == 1 or self.consecutive % 20 == 0:
            log.error("%s could not be written (%s), attempt %d; retrying in %.1f s", self.target,
                      self.last_error, self.consecutive, wait)

    def status(self) -> dict:
        return {"failures": self.failures, "failing": self.failing, "last_error": self.last_error,
                "last_success": self.last_success}
