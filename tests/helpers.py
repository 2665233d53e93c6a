"""Shared test helpers: config files, baselines and message streams on disk."""

from __future__ import annotations

import contextlib
import json
import os
import urllib.error
import urllib.request

import pyarrow.parquet as pq
import yaml

from monitor.baseline import build_baseline
from monitor.config import load_config


def write_setup(tmp, synth, train_rows: int = 20_000, schema: dict | None = None, **overrides):
    """Write train.parquet, driftmon.yaml and baseline.json for a synth schema; return (config_path, config).

    ``schema`` entries are added to the config's schema (e.g. a label); ``overrides`` replace top-level keys.
    """
    tmp = str(tmp)
    train = os.path.join(tmp, "train.parquet")
    pq.write_table(synth.training_table(train_rows), train)
    path = os.path.join(tmp, "driftmon.yaml")
    tree = synth.config(**overrides)
    tree["schema"].update(schema or {})
    with open(path, "w") as fh:
        yaml.safe_dump(tree, fh, sort_keys=False)
    config = load_config(path)
    build_baseline(config, train).save(config.baseline)
    return path, config


def same(a, b, rel=1e-9) -> bool:
    """Equal but for float rounding (per-bin sums and moments depend on how the stream was cut into batches)."""
    import pytest

    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k], rel) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(same(x, y, rel) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float):
        return a == pytest.approx(b, rel=rel, abs=1e-12)
    return a == b


def write_jsonl(path, messages) -> None:
    with open(path, "wb") as fh:
        for m in messages:
            fh.write(m + b"\n")


def read_jsonl(path) -> list[dict]:
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def start_service(args: list[str], log_path, url: str, timeout: float = 30.0):
    """Start a server process (Prometheus, Alertmanager) and wait until ``url``/-/ready answers 200."""
    import subprocess
    import time
    import urllib.request

    log = open(log_path, "wb")
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url + "/-/ready", timeout=1) as r:
                if r.status == 200:
                    return proc, log
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            log.close()
            raise AssertionError(open(log_path).read())
        time.sleep(0.1)


def alertmanager_binary() -> str:
    """Debian's prometheus-alertmanager (or an alertmanager on PATH); missing: fails in CI, skips elsewhere."""
    import shutil

    import pytest

    path = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("prometheus-alertmanager is not installed: run scripts/setup.sh")
        pytest.skip("prometheus-alertmanager is not installed: run scripts/setup.sh")
    return path


@contextlib.contextmanager
def alertmanager(tmp_path, webhook_url: str, group_by: list[str], resolve_timeout: str | None = None):
    """A real Alertmanager routing every alert, resolved ones too, to ``webhook_url``; yields its URL.

    Groups by ``group_by`` and notifies at once (group_wait 0s, group_interval 1s); ``resolve_timeout``
    sets the global one (Alertmanager's default is 5m).
    """
    from monitor.tansu import free_port

    port = free_port()
    config = tmp_path / "alertmanager.yml"
    preamble = f"global:\n  resolve_timeout: {resolve_timeout}\n" if resolve_timeout else ""
    config.write_text(f"""
{preamble}route:
  receiver: hook
  group_by: [{', '.join(group_by)}]
  group_wait: 0s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: hook
    webhook_configs:
      - url: {webhook_url}
        send_resolved: true
""")
    url = f"http://127.0.0.1:{port}"
    proc, log = start_service([alertmanager_binary(), f"--config.file={config}", f"--storage.path={tmp_path / 'am'}",
                               f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
                              tmp_path / "alertmanager.log", url)
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


def load_module(path, name: str):
    """Import a script that is not in a package (grafana/generate.py, deploy/prometheus/generate.py)."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def promtool(*args, cwd=None):
    """Run Debian's promtool; a missing promtool fails the test (skips only outside CI with DRIFTMON_ALLOW_SKIP=1)."""
    import shutil
    import subprocess

    import pytest

    exe = shutil.which("promtool")
    if exe is None:
        message = "promtool is not on PATH: install Debian's `prometheus` package (scripts/setup.sh)"
        if not os.environ.get("CI") and os.environ.get("DRIFTMON_ALLOW_SKIP") == "1":
            pytest.skip(message)
        pytest.fail(message)
    return subprocess.run([exe, *map(str, args)], capture_output=True, text=True, timeout=120, cwd=cwd)


def report(proc) -> str:
    """A finished process's command and output, for assertion messages."""
    return f"$ {' '.join(proc.args)}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"


def mount_tmpfs(path, size: str = "2m"):
    """Mount a small tmpfs at ``path`` (a disk that can be filled); returns a function that unmounts it.

    Needs root (CI runs as root); elsewhere the test fails, or skips with DRIFTMON_ALLOW_SKIP=1 outside CI.
    """
    import subprocess

    import pytest

    os.makedirs(path, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        message = f"cannot mount a tmpfs (needs root): {done.stderr.strip()}"
        if not os.environ.get("CI") and os.environ.get("DRIFTMON_ALLOW_SKIP") == "1":
            pytest.skip(message)
        pytest.fail(message, pytrace=False)
    return lambda: subprocess.run(["umount", "-l", str(path)], check=False)


def fill_disk(directory) -> str:
    """Fill the filesystem of ``directory`` with a file until ENOSPC; returns the file (delete it to free)."""
    filler = os.path.join(str(directory), "filler")
    with open(filler, "wb", buffering=0) as fh:
        chunk = b"\0" * 65536
        try:
            while True:
                fh.write(chunk)
        except OSError:
            pass
        for size in (4096, 512, 1):  # the last bytes too
            try:
                while True:
                    fh.write(b"\0" * size)
            except OSError:
                continue
    return filler


def http_get(port: int, path: str) -> tuple[int, bytes] | None:
    """(status, body) of a GET on loopback, whatever the status; None while nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return None
