"""The `driftmon` command line."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from monitor import __version__
from monitor.config import ConfigError, load_config

__all__ = ["main"]

log = logging.getLogger("driftmon")


class _QuietKafka(logging.Filter):
    """kafka-python logs every failed reconnect at ERROR, some with a traceback, several a second while a
    broker is down. Keep its messages, without tracebacks, and each distinct one at most once a minute;
    driftmon logs the outage itself (see monitor/health.py)."""

    def __init__(self, every: float = 60.0):
        super().__init__()
        self.every = every
        self._last: dict[tuple, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("kafka"):
            return True
        record.exc_info = record.exc_text = record.stack_info = None
        # librdkafka's format is "%s [%s] %s" for every line: its lines differ in their arguments
        text = record.getMessage() if record.name == "kafka.librdkafka" else str(record.msg)
        key = (record.name, record.levelno, text[:80])
        now = record.created
        if now - self._last.get(key, -1e9) < self.every:
            return False
        if len(self._last) > 1000:
            self._last.clear()
        self._last[key] = now
        return True


def _setup_logging(level: str = "INFO") -> None:
    root = logging.getLogger()
    theirs = list(root.handlers)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    # only the handler made here: one the embedding program (or pytest) installed is not driftmon's to filter
    for handler in root.handlers:
        if handler not in theirs and not any(isinstance(f, _QuietKafka) for f in handler.filters):
            handler.addFilter(_QuietKafka())
    logging.getLogger("kafka").setLevel(logging.WARNING)
    # ERROR: a job still running at its next time (a broker probe waiting out its timeout) is not news
    logging.getLogger("apscheduler").setLevel(logging.ERROR)


def _load(path: str, need_baseline: bool = True):
    from monitor.baseline import Baseline

    config = load_config(path)
    baseline = None
    if need_baseline:
        baseline = Baseline.load(config.baseline)
        baseline.check(config)
    return config, baseline


def cmd_check_config(args) -> int:
    config, baseline = _load(args.config, need_baseline=not args.no_baseline)
    if config.kafka is not None:
        from monitor.kafka_client import client_options

        client_options(config.kafka)  # secrets are present
    if config.http.web_config_file:
        from monitor.webconfig import WebSecurity

        WebSecurity(config.http.web_config_file)  # TLS files load, users' hashes are bcrypt
    extra = f", baseline {baseline.fingerprint}" if baseline else ""
    print(f"config ok: model {config.model}, {len(config.schema.features)} features{extra}")
    return 0


def cmd_baseline(args) -> int:
    from monitor.baseline import build_baseline

    config = load_config(args.config)
    baseline = build_baseline(config, args.data, seed=args.seed, validation_path=args.validation)
    out = args.out or config.baseline
    baseline.save(out)
    print(f"wrote {out}: {len(baseline.profiles)} columns from {baseline.meta['source']['rows']} rows, "
          f"fingerprint {baseline.fingerprint}")
    perf = baseline.extras.get("performance")
    if perf:
        shown = ", ".join(f"{k} {v:.3f}" for k, v in perf["metrics"].items() if isinstance(v, float))
        print(f"baseline performance on {perf['source']} ({perf['n']} labelled rows): {shown}")
    return 0


def cmd_init(args) -> int:
    from monitor.infer import starter_config

    sys.stdout.write(starter_config(args.data, model=args.model))
    return 0


def cmd_replay(args) -> int:
    from monitor.replay import Replay

    config, baseline = _load(args.config)
    if config.window.duration is not None and config.schema.timestamp is None:
        raise ConfigError("schema.timestamp", "replay with time windows needs an event time in the messages")
    replay = Replay(config, baseline)
    out = open(args.out, "w", encoding="utf-8") if args.out and args.out != "-" else sys.stdout
    alerts = open(args.alerts, "w", encoding="utf-8") if args.alerts else None

    def emit(records, notes):
        for record in records:
            out.write(json.dumps(record, sort_keys=True, allow_nan=False) + "\n")
        if alerts is not None:
            for note in notes:
                alerts.write(json.dumps(note, sort_keys=True, allow_nan=False) + "\n")

    with open(args.input, "rb") as fh:
        chunk = []
        for line in fh:
            line = line.strip()
            if not line:
                continue
            chunk.append(line)
            if len(chunk) >= args.batch_size:
                emit(*replay.process(chunk))
                chunk = []
        if chunk:
            emit(*replay.process(chunk))
    if not args.no_flush:
        emit(*replay.flush())
    if out is not sys.stdout:
        out.close()
    if alerts is not None:
        alerts.close()
    pipeline = replay.pipeline
    invalid = ", ".join(f"{k} {v}" for k, v in sorted(pipeline.invalid.items())) or "none"
    print(f"replayed {pipeline.consumed} messages (invalid: {invalid}) into {replay.windows} drift and "
          f"{replay.performance_windows} performance windows, {replay.notifications} notifications", file=sys.stderr)
    return 0


def cmd_compare(args) -> int:
    from monitor.offline import compare_files

    config = load_config(args.config)
    try:
        result = compare_files(config, args.current, args.reference)
    except ValueError as exc:
        print(f"compare error: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(json.dumps(result, sort_keys=True, allow_nan=False, indent=1 if args.pretty else None) + "\n")
    drifted = result["drifted"]
    print(f"{len(drifted)} of {len(result['features'])} features drifted" + (f": {', '.join(drifted)}" if drifted
          else ""), file=sys.stderr)
    return 1 if drifted and args.exit_code else 0


def cmd_report(args) -> int:
    from monitor.report import load_windows, performance_for, render_report

    config, baseline = _load(args.config)
    try:
        if args.current:
            from monitor.offline import compare_files

            result, history, source = compare_files(config, args.current), None, os.path.basename(args.current)
        else:
            result, history = load_windows([args.windows], args.index)
            source = os.path.basename(args.windows)
        logs = [args.performance] if args.performance else [] if args.current else [args.windows]
        performance = performance_for(logs, result) if logs else None
        text = render_report(config, baseline, result, history=history, performance=performance, source=source)
    except ValueError as exc:
        print(f"report error: {exc}", file=sys.stderr)
        return 2
    with open(args.out, "w", encoding="utf-8") as fh:
        fh.write(text)
    print(f"wrote {args.out} ({len(text.encode()) / 1e6:.2f} MB): window {result['window'].get('index')}, "
          f"{len(result['drifted'])} of {len(result['features'])} features drifted", file=sys.stderr)
    return 0


def cmd_run(args) -> int:
    from monitor.daemon import Daemon

    config, baseline = _load(args.config)
    _setup_logging(config.log_level)
    if args.port is not None:
        if not 0 <= args.port <= 65535:  # the config's own check, which the override skips
            raise ConfigError("http.port", f"--port {args.port}: must be between 0 and 65535")
        config.http.port = args.port
    daemon = Daemon(config, baseline)
    daemon.install_signal_handlers()
    return daemon.run()


def cmd_demo(args) -> int:
    from monitor.demo import run_demo

    return run_demo(workdir=args.workdir, port=args.port, events=args.events, rate=args.rate,
                    duration=args.duration)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="driftmon", description="Drift monitoring for ML models on Kafka.")
    parser.add_argument("--version", action="version", version=f"driftmon {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("init", help="print a starter config with feature types inferred from training data")
    p.add_argument("--data", required=True, help="training data: .csv, .parquet or .jsonl")
    p.add_argument("--model", default="my-model")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("baseline", help="profile training data into a baseline file")
    p.add_argument("--config", required=True)
    p.add_argument("--data", required=True, help="training data: .csv, .parquet or .jsonl")
    p.add_argument("--out", help="baseline file (default: the config's `baseline`)")
    p.add_argument("--seed", type=int, default=0, help="seed of the reservoir sample")
    p.add_argument("--validation", help="labelled data (prediction, score, label columns) for the baseline "
                                        "performance; default: the training data, when it has them")
    p.set_defaults(func=cmd_baseline)

    p = sub.add_parser("check-config", help="validate a config (and its baseline)")
    p.add_argument("--config", required=True)
    p.add_argument("--no-baseline", action="store_true", help="do not load the baseline")
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser("run", help="run the daemon")
    p.add_argument("--config", required=True)
    p.add_argument("--port", type=int, help="override http.port")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("replay", help="push a file of prediction logs through the pipeline, without Kafka")
    p.add_argument("--config", required=True)
    p.add_argument("--input", required=True, help="JSON Lines of prediction logs")
    p.add_argument("--out", default="-", help="drift and performance window results as JSON Lines, each tagged "
                                              "\"kind\" (default: stdout)")
    p.add_argument("--alerts", help="every notification the alert engine would send, as JSON Lines")
    p.add_argument("--batch-size", type=int, default=5000)
    p.add_argument("--no-flush", action="store_true", help="do not evaluate the last, incomplete window")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("compare", help="compare a data file with the baseline (or a reference file), no Kafka")
    p.add_argument("--config", required=True)
    p.add_argument("--current", required=True, help="current data: .csv, .parquet or .jsonl")
    p.add_argument("--reference", help="reference data to profile instead of the config's baseline")
    p.add_argument("--pretty", action="store_true", help="indent the JSON result")
    p.add_argument("--exit-code", action="store_true", help="exit 1 when a feature drifted (for CI gates)")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("report", help="write a self-contained HTML drift report of a data file or a window")
    p.add_argument("--config", required=True)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--current", help="current data (.csv, .parquet, .jsonl), compared with the baseline")
    what.add_argument("--windows", help="window results (replay --out, or the daemon's state/windows.jsonl)")
    p.add_argument("--index", type=int, help="the window to report (default: the last in --windows)")
    p.add_argument("--performance", help="performance results (state/performance.jsonl) to show with it "
                                         "(default: those in --windows, as replay --out writes them)")
    p.add_argument("--out", default="driftmon-report.html", help="the HTML file to write")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("demo", help="embedded broker, generated data, live drift in the terminal")
    p.add_argument("--workdir", help="where to put generated files (default: a temporary folder)")
    p.add_argument("--port", type=int, default=9108)
    p.add_argument("--events", type=int, default=200_000, help="messages to produce")
    p.add_argument("--rate", type=float, default=4000.0, help="messages per second")
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    p.set_defaults(func=cmd_demo)
    return parser


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command != "run":
        _setup_logging(os.environ.get("DRIFTMON_LOG_LEVEL", "WARNING"))
    from monitor.baseline import BaselineError

    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"config error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except BaselineError as exc:
        print(f"baseline error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0
    except OSError as exc:
        if exc.filename is None or args.command == "run":  # the daemon reports its own files (state.dir)
            raise
        print(f"{args.command} error: {exc.filename}: {exc.strerror}", file=sys.stderr)  # --input, --out
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
