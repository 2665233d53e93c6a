"""Figure 5: the cost of the multivariate and embedding detectors beside the pipeline's.

Reference: ``Pipeline.process`` over batches of 2000 wide() messages (figure 1's subject), as
microseconds per message. Subjects, each interleaved with the reference (ABBA) and reported as a
cost ratio (detector us per message / pipeline us per message; 0.5 = the detector would add half of
the pipeline's cost):

* ``pca_25``: ``PCAReconstruction.update`` on the 25 wide() feature columns, decoded by the
  pipeline's own decoder (18 numeric, 7 categorical one-hot encoded);
* ``pca_200``: the same on 200 numeric columns (every tenth pair correlated);
* ``embedding_384``: ``EmbeddingDrift.update`` on 384-dimensional vectors (10 components); the
  decoding of the vectors from JSON is not included;
* ``embedding_384_pipeline``: the whole ``Pipeline.process`` on the same messages with an embedding feature
  of dimension 384 added (about 4 KB of JSON more per message), decoding included, against the pipeline
  without it;
* ``classifier_update``: ``DomainClassifier.update`` (the reservoir) on the 25 wide() columns;
* ``classifier_evaluation``: one ``DomainClassifier.result()`` (a model fit on 500 + 500 rows, scoring
  500 + 500), seconds per evaluation, beside the pipeline's time for one 5000-event window;
* ``classifier_background``: the daemon's pipeline (``background=True``) with the domain classifier fitted
  back to back on its worker thread (``min_interval`` 1 ms: the worst case) against the pipeline without
  multivariate methods: what the worker costs the consuming thread.
"""

from __future__ import annotations

import numpy as np

from bench.common import (Timer, batches_from_pool, interleave, log, message_pool, round_sizes, scratch_dir, summarize,
                          time_batches, wide_setup)

BATCH = 2000
WINDOW = 5000


def _numeric_table(rng, n, width):
    x = rng.normal(size=(n, width))
    x[:, 1::10] = 0.8 * x[:, 0::10] + 0.6 * x[:, 1::10]
    return {f"x{j}": x[:, j] for j in range(width)}


def run(quick: bool = False) -> dict:
    from detectors.embedding import EmbeddingDrift
    from detectors.multivariate import DomainClassifier, PCAReconstruction
    from monitor.daemon import streaming_gc
    from monitor.pipeline import Pipeline

    per_round, rounds = round_sizes(quick)
    train_rows = 20_000 if quick else 50_000
    evaluations = 3 if quick else 10
    synth, config, baseline = wide_setup("multivariate", train_rows, {"window": {"size": WINDOW}})
    pool = message_pool(20_000 if quick else 100_000, seed=1)

    def pipeline_run():
        pipeline = Pipeline(config, baseline)
        with streaming_gc():
            return time_batches(pipeline.process, batches_from_pool(pool, BATCH, per_round))

    # the 25 wide() features as the pipeline decodes them
    decoder = Pipeline(config, baseline).decoder
    kinds = {s.name: s.type for s in config.schema.features}
    train = decoder.decode(message_pool(train_rows, seed=2)).columns
    decoded = [decoder.decode(chunk).columns for chunk in batches_from_pool(pool, BATCH, len(pool))]
    decoded = [{k: c[k] for k in kinds} for c in decoded]
    batches_25 = [decoded[i % len(decoded)] for i in range(per_round // BATCH)]
    rng = np.random.default_rng(0)
    kinds_200 = {f"x{j}": "numeric" for j in range(200)}
    pool_200 = [_numeric_table(rng, BATCH, 200) for _ in range(10)]
    batches_200 = [pool_200[i % 10] for i in range(per_round // BATCH)]
    emb_pool = [rng.normal(size=(BATCH, 16)) @ rng.normal(size=(16, 384)) + 0.3 * rng.normal(size=(BATCH, 384))
                for _ in range(5)]
    batches_emb = [emb_pool[i % 5] for i in range(per_round // BATCH)]

    log("multivariate: fitting the baseline artefacts")
    models = {
        "pca_25": PCAReconstruction.fit_baseline(train, kinds),
        "pca_200": PCAReconstruction.fit_baseline(_numeric_table(rng, train_rows, 200), kinds_200),
        "embedding_384": EmbeddingDrift.fit_baseline(np.vstack(emb_pool * (train_rows // (5 * BATCH) or 1)), 10),
        "classifier": DomainClassifier.fit_baseline(train, kinds, sample_size=1000),
    }
    def rows(b):
        return len(b["num_0"])

    subjects = {  # a fresh detector each run
        "pca_25": lambda: time_batches(PCAReconstruction(models["pca_25"]).update, batches_25, rows),
        "pca_200": lambda: time_batches(PCAReconstruction(models["pca_200"]).update, batches_200, lambda b: BATCH),
        "embedding_384": lambda: time_batches(EmbeddingDrift(models["embedding_384"]).update, batches_emb,
                                              lambda b: BATCH),
        "classifier_update": lambda: time_batches(DomainClassifier(models["classifier"]).update, batches_25, rows),
    }
    # the pipeline with a 384-dimensional embedding feature, decoding included
    emb_config, emb_baseline, emb_pool = _embedding_setup(synth, train_rows, rng)
    emb_per_round = per_round // 5

    def pipeline_emb_run():
        pipeline = Pipeline(emb_config, emb_baseline)
        with streaming_gc():
            return time_batches(pipeline.process, batches_from_pool(emb_pool, BATCH, emb_per_round))

    def pipeline_plain_run():
        pipeline = Pipeline(config, baseline)
        with streaming_gc():
            return time_batches(pipeline.process, batches_from_pool(pool, BATCH, emb_per_round))

    out = {"what": __doc__.split("\n\n")[1].strip(), "batch": BATCH, "messages_per_round": per_round,
           "rounds": rounds, "figures": {}}
    pipeline_run()  # warm-up
    references = {"embedding_384_pipeline": pipeline_plain_run}
    subjects["embedding_384_pipeline"] = pipeline_emb_run
    for name, subject in subjects.items():
        subject()
        got = interleave(references.get(name, pipeline_run), subject, rounds, log=log, label=name)
        s = summarize(got, "rate")
        cost = [r["subject"]["us_per_msg"] / r["ceiling"]["us_per_msg"] for r in got]
        out["figures"][name] = {
            "subject_us_per_msg": float(np.median([r["subject"]["us_per_msg"] for r in got])),
            "pipeline_us_per_msg": float(np.median([r["ceiling"]["us_per_msg"] for r in got])),
            "cost_ratio": float(np.median(cost)), "detail": s,
        }
        if name.startswith("pca"):
            out["figures"][name]["components"] = models[name]["components"]

    # one evaluation of the domain classifier against the pipeline's time for one window
    clf = DomainClassifier(models["classifier"], sample_size=1000)
    for b in batches_25[: WINDOW // BATCH + 1]:
        clf.update(b)
    clf.result()  # warm-up: imports sklearn

    def evaluation():
        with Timer() as t:
            for _ in range(evaluations):
                r = clf.result()
        return {"seconds": t.seconds / evaluations, "auc": r.auc}

    def window_time():
        p = pipeline_run()
        return {"seconds": p["us_per_msg"] * WINDOW / 1e6}

    # the consuming thread while the worker fits back to back
    _, bg_config, bg_baseline = wide_setup("background", train_rows, {
        "window": {"size": WINDOW},
        "multivariate": {"methods": ["domain_classifier"], "min_interval": "1ms"}})
    runners = []

    def background_run():
        pipeline = Pipeline(bg_config, bg_baseline, background=True)
        runners.append(pipeline.multivariate.runner)
        with streaming_gc():
            result = time_batches(pipeline.process, batches_from_pool(pool, BATCH, per_round))
        pipeline.multivariate.runner.wait(60)
        return result

    background_run()
    got = interleave(pipeline_run, background_run, rounds, log=log, label="classifier_background")
    out["figures"]["classifier_background"] = {
        "subject_us_per_msg": float(np.median([r["subject"]["us_per_msg"] for r in got])),
        "pipeline_us_per_msg": float(np.median([r["ceiling"]["us_per_msg"] for r in got])),
        "cost_ratio": float(np.median([r["subject"]["us_per_msg"] / r["ceiling"]["us_per_msg"] for r in got])),
        "evaluations_per_round": float(np.median([r.evaluations for r in runners[1:]])),
        "detail": summarize(got, "rate"),
    }

    got = interleave(window_time, evaluation, rounds, log=log, label="classifier_evaluation")
    s = summarize(got, "seconds", higher_is_better=False)
    out["figures"]["classifier_evaluation"] = {
        "seconds_per_evaluation": s["subject_median"], "pipeline_seconds_per_window": s["ceiling_median"],
        "windows_per_evaluation": float(np.median([r["subject"]["seconds"] / r["ceiling"]["seconds"] for r in got])),
        "sample": clf.sample.shape[0], "reference": clf.reference.shape[0], "detail": s,
    }
    return out


def _embedding_setup(synth, train_rows: int, rng):
    """Config, baseline and a message pool of wide() plus a 384-dimensional ``emb`` feature."""
    import pyarrow as pa
    import yaml

    from monitor.baseline import Baseline, build_baseline
    from monitor.config import load_config

    tmp = scratch_dir("driftmon-bench-embedding-")
    loadings = rng.normal(size=(16, 384))

    def vectors(n):
        return np.round(rng.normal(size=(n, 16)) @ loadings + 0.3 * rng.normal(size=(n, 384)), 4)

    table = synth.training_table(train_rows)
    table = table.append_column("emb", pa.array(vectors(train_rows).tolist(), type=pa.list_(pa.float64())))
    import pyarrow.parquet as pq

    pq.write_table(table, f"{tmp}/train.parquet")
    tree = synth.config(window={"size": WINDOW})
    tree["schema"]["features"].append({"name": "emb", "type": "embedding", "dimension": 384})
    with open(f"{tmp}/driftmon.yaml", "w", encoding="utf-8") as fh:
        yaml.safe_dump(tree, fh, sort_keys=False)
    config = load_config(f"{tmp}/driftmon.yaml")
    build_baseline(config, f"{tmp}/train.parquet").save(config.baseline)
    plain = message_pool(5000, seed=3)
    emb = vectors(len(plain))
    pool = [m[:-1] + b',"emb":[' + ",".join(map(repr, v)).encode() + b"]}" for m, v in zip(plain, emb.tolist())]
    return config, Baseline.load(config.baseline), pool
