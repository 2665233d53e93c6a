"""Shared pieces of the benchmarks: machine facts, setups, message pools, interleaved runs."""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

#: Distributions whose versions go into the results (as pip names them).
PACKAGES = ("numpy", "msgspec", "kafka-python", "crc32c", "evidently", "pandas", "scipy", "pyarrow", "psutil")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total_gib() -> float | None:
    try:
        with open("/proc/meminfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def crc32c_status() -> dict:
    """Whether kafka-python will check record CRCs with the C ``crc32c`` package (10x faster)."""
    try:
        import crc32c  # noqa: F401

        importable = True
    except ImportError:
        importable = False
    try:
        from kafka.record import util

        used = getattr(util, "crc32c_c", None) is not None
    except ImportError:
        used = False
    return {"importable": importable, "used_by_kafka_python": used}


def git_info() -> dict:
    """The commit benchmarked, and whether the code it imports has uncommitted changes."""
    import subprocess

    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    dirty = git("status", "--porcelain", "--", "monitor", "detectors")
    return {"commit": git("rev-parse", "HEAD") or None,
            "uncommitted_in_monitor_detectors": [line[3:] for line in dirty.splitlines()]}


def machine_info() -> dict:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count()
    return {
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": affinity,
        "memory_gib": _mem_total_gib(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "versions": versions,
        "crc32c": crc32c_status(),
        "git": git_info(),
        "openblas_env": {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if k in os.environ},
    }


def proc_status() -> dict:
    """VmRSS and VmHWM (peak RSS) of this process in MiB, from /proc/self/status."""
    out = {}
    with open("/proc/self/status", encoding="utf-8") as fh:
        for line in fh:
            key = line.split(":", 1)[0]
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(line.split()[1]) / 1024.0
    return out


# ---- setups ---------------------------------------------------------------------------------------

FIXED_START = 1_767_225_600.0  # 2026-01-01T00:00:00Z: messages are identical from run to run


def make_setup(directory: str | os.PathLike, synth, train_rows: int, config_overrides: dict | None = None,
               drop: tuple[str, ...] = ()):
    """Write train.parquet, driftmon.yaml and baseline.json for a synth schema; return (config_path, config, baseline).

    ``drop`` removes schema roles (e.g. ``("prediction", "score")``) from the generated config.
    """
    import pyarrow.parquet as pq
    import yaml

    from monitor.baseline import Baseline, build_baseline
    from monitor.config import load_config

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    train = directory / "train.parquet"
    pq.write_table(synth.training_table(train_rows), train)
    tree = synth.config(**(config_overrides or {}))
    for role in drop:
        tree["schema"].pop(role, None)
    path = directory / "driftmon.yaml"
    with open(path, "w", encoding="utf-8") as fh:
        yaml.safe_dump(tree, fh, sort_keys=False)
    config = load_config(path)
    build_baseline(config, str(train)).save(config.baseline)
    return str(path), config, Baseline.load(config.baseline)


def scratch_dir(prefix: str) -> str:
    """A temp dir removed when the process exits."""
    import atexit
    import shutil
    import tempfile

    path = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, path, True)
    return path


def wide_setup(name: str, train_rows: int, config_overrides: dict | None = None):
    """:func:`make_setup` for ``wide(0)`` in a scratch dir ``driftmon-bench-<name>-``: (synth, config, baseline)."""
    from monitor.synth import wide

    synth = wide(0)
    _, config, baseline = make_setup(scratch_dir(f"driftmon-bench-{name}-"), synth, train_rows, config_overrides)
    return synth, config, baseline


def round_sizes(quick: bool) -> tuple[int, int]:
    """(messages a round, rounds) of an interleaved pipeline figure: 40,000 x 2 with --quick, else 200,000 x 5."""
    return (40_000, 2) if quick else (200_000, 5)


def message_pool(n: int, seed: int = 1) -> list[bytes]:
    """``n`` distinct wide() messages (generated once; benchmarks cycle through them)."""
    from monitor.synth import wide

    return wide(seed).messages(n, start_time=FIXED_START)


def batches_from_pool(pool: list[bytes], batch: int, total: int):
    """Yield ``total`` messages from ``pool`` in lists of ``batch``, wrapping around (no new bytes objects)."""
    i, done, size = 0, 0, len(pool)
    while done < total:
        k = min(batch, total - done)
        if i + k <= size:
            chunk = pool[i:i + k]
        else:
            chunk = pool[i:] + pool[:k - (size - i)]
        i = (i + k) % size
        done += k
        yield chunk


# ---- interleaved measurements ---------------------------------------------------------------------

def interleave(ceiling, subject, rounds: int, log=print, label: str = "") -> list[dict]:
    """Alternate ``ceiling()`` and ``subject()`` runs (ABBA order) and return one dict per round.

    Each callable returns a dict with at least ``rate`` (higher is better) or ``seconds`` (lower is better).
    The machine's speed wanders by ~25% over minutes, so each round pairs two runs made seconds apart.
    """
    rounds_out = []
    for r in range(rounds):
        order = [("ceiling", ceiling), ("subject", subject)]
        if r % 2:
            order.reverse()
        got = {}
        for name, fn in order:
            got[name] = fn()
        rounds_out.append(got)
        log(f"  {label} round {r + 1}/{rounds}: ceiling {_fmt(got['ceiling'])}, subject {_fmt(got['subject'])}")
    return rounds_out


def _fmt(m: dict) -> str:
    if "rate" in m:
        return f"{m['rate']:,.0f} msg/s"
    return f"{m['seconds']:.3f} s"


def summarize(rounds: list[dict], key: str, higher_is_better: bool = True) -> dict:
    """Medians of ceiling and subject, and the median of the per-round ratios subject/ceiling."""
    ceil = [r["ceiling"][key] for r in rounds]
    subj = [r["subject"][key] for r in rounds]
    if higher_is_better:
        ratios = [s / c for s, c in zip(subj, ceil)]
    else:
        ratios = [c / s for s, c in zip(subj, ceil)]
    return {
        "ceiling_median": statistics.median(ceil),
        "subject_median": statistics.median(subj),
        "ratio_median": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "ceiling_all": ceil,
        "subject_all": subj,
        "ratios": ratios,
    }


def time_batches(process, batches, count=len) -> dict:
    """Call ``process(batch)`` for every batch, timed: rate (messages a second), us_per_msg, messages, seconds.

    ``count(batch)`` is the number of messages in a batch (default: its length, for lists of messages).
    Callers that measure the pipeline wrap this in the daemon's GC setting (``monitor.daemon.streaming_gc``).
    """
    n = 0
    with Timer() as t:
        for batch in batches:
            process(batch)
            n += count(batch)
    return {"rate": n / t.seconds, "us_per_msg": 1e6 * t.seconds / n, "messages": n, "seconds": t.seconds}


class Timer:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start


def log(*args) -> None:
    print(*args, file=sys.stderr, flush=True)


def stop(proc, timeout_s: float = 30.0) -> None:
    """Terminate a daemon started by a benchmark, killed if it has not exited within ``timeout_s``."""
    import subprocess

    proc.terminate()
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
