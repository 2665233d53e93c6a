"""Checkpoints and the window log, written atomically to the state directory (JSON, never pickle)."""

from __future__ import annotations

import json
import os

__all__ = ["StateStore"]

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
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
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
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())
        self.last_logged[log] = index
        return True
