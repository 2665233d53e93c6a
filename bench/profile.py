"""cProfile of a benchmark's subject, for finding where the time goes.

    python -m bench.profile pipeline [--messages 200000] [--top 25]
    python -m bench.profile daemon   [--messages 200000] [--top 25] [--client confluent-kafka]   # needs the Kafka jars

``pipeline`` profiles ``Pipeline.process`` over batches of 2000 wide() messages;
``daemon`` fills a topic on a fresh Apache Kafka broker and profiles the daemon's
consume loop (``Daemon._consume_once``) over it. Both print the top entries by own
time and by cumulative time.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import tempfile
import time


def _print(profile: cProfile.Profile, top: int, out) -> None:
    for key in ("tottime", "cumulative"):
        buf = io.StringIO()
        stats = pstats.Stats(profile, stream=buf).strip_dirs().sort_stats(key)
        stats.print_stats(top)
        print(f"---- sorted by {key}", file=out)
        print(buf.getvalue(), file=out)


def profile_pipeline(messages: int, top: int, out=sys.stdout) -> None:
    from bench.common import batches_from_pool, make_setup, message_pool, scratch_dir
    from bench.throughput import BATCH
    from monitor.pipeline import Pipeline
    from monitor.synth import wide

    _, config, baseline = make_setup(scratch_dir("driftmon-profile-"), wide(0), 100_000)
    pool = message_pool(min(messages, 100_000), seed=1)
    pipeline = Pipeline(config, baseline)
    for chunk in batches_from_pool(pool, BATCH, 20_000):  # warm-up
        pipeline.process(chunk)
    pipeline = Pipeline(config, baseline)
    prof = cProfile.Profile()
    started = time.perf_counter()
    prof.enable()
    for chunk in batches_from_pool(pool, BATCH, messages):
        pipeline.process(chunk)
    prof.disable()
    elapsed = time.perf_counter() - started
    print(f"Pipeline.process: {messages:,} messages in {elapsed:.2f} s under cProfile "
          f"({messages / elapsed:,.0f} msg/s; cProfile slows Python-heavy code)", file=out)
    _print(prof, top, out)


def profile_daemon(messages: int, top: int, out=sys.stdout, client: str = "kafka-python") -> None:
    import msgspec

    from bench.common import make_setup, message_pool, scratch_dir
    from bench.kafka_e2e import TOPIC, _produce
    from monitor.config import Config
    from monitor.daemon import Daemon
    from monitor.synth import wide
    from tests.brokers import KafkaBroker

    tmp = scratch_dir("driftmon-profile-")
    _, config, baseline = make_setup(tmp, wide(0), 100_000)
    pool = message_pool(50_000, seed=1)
    with KafkaBroker() as broker:
        broker.create_topic(TOPIC, 1)
        _produce(broker.bootstrap, pool, messages)
        tree = msgspec.to_builtins(config)
        tree["kafka"] = {"bootstrap_servers": broker.bootstrap, "topic": TOPIC, "group_id": "profile", "client": client}
        tree["http"] = {"host": "127.0.0.1", "port": 0}
        tree["state"] = {"dir": tempfile.mkdtemp(prefix="state-", dir=tmp)}
        daemon = Daemon(msgspec.convert(tree, Config), baseline).start()
        try:
            while daemon.pipeline.consumed == 0:  # join the group and get the first batch outside the profile
                daemon._consume_once()
            prof = cProfile.Profile()
            started = time.perf_counter()
            done = daemon.pipeline.consumed
            prof.enable()
            while daemon.pipeline.consumed < messages:
                daemon._consume_once()
            prof.disable()
            elapsed = time.perf_counter() - started
            done = daemon.pipeline.consumed - done
        finally:
            daemon.shutdown()
    print(f"Daemon._consume_once ({client}): {done:,} messages in {elapsed:.2f} s under cProfile ({done / elapsed:,.0f} msg/s)",
          file=out)
    _print(prof, top, out)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=("pipeline", "daemon"))
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--client", choices=("kafka-python", "confluent-kafka"), default="kafka-python",
                        help="kafka.client of the profiled daemon")
    args = parser.parse_args(argv)
    if args.what == "pipeline":
        profile_pipeline(args.messages, args.top)
    else:
        profile_daemon(args.messages, args.top, client=args.client)


if __name__ == "__main__":
    main()
