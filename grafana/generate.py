#!/usr/bin/env python3
"""Generate driftmon's Grafana dashboards (``grafana/dashboards/*.json``).

One config object (:data:`CONFIG`) holds the datasource variable name, the job
selector and the stable dashboard uids, in the style of the kubernetes-mixin
``_config``.  The committed JSON files are this script's output;
``tests/test_grafana.py`` fails when they differ.

    python grafana/generate.py            # rewrite grafana/dashboards/*.json
    python grafana/generate.py --check    # exit 1 if a committed file is stale

Conventions every panel follows (checked by tests/test_grafana.py):
- queries go to the ``${datasource}`` variable (a ``datasource`` variable of type
  prometheus), never to a hard-coded datasource uid;
- every series selector carries the job selector and ``model=~"$model"``;
- rates use ``$__rate_interval``;
- every panel has a description and a unit.

This file is also a small library for tests: :func:`iter_panel_queries` lists a
dashboard's PromQL with the template variables substituted.  The ``grafana/``
folder is deliberately not a Python package (no ``__init__.py``) so it cannot
shadow anything installed; load this module by path::

    spec = importlib.util.spec_from_file_location("driftmon_grafana", "grafana/generate.py")
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    for title, expr in mod.iter_panel_queries(mod.load_dashboards()["driftmon-overview"],
                                              mod.DEFAULT_VARIABLES): ...
"""

import argparse
import dataclasses
import json
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
OUTPUT_DIR = HERE / "dashboards"


@dataclasses.dataclass(frozen=True)
class Config:
    # Name of the datasource template variable; queries use "${<name>}".
    datasource_variable: str = "datasource"
    # Label matchers that select driftmon's own series (the scrape job).
    selector: str = 'job="driftmon"'
    # Stable uids: links and bookmarks survive re-imports.
    overview_uid: str = "driftmon-overview"
    feature_uid: str = "driftmon-feature"
    operations_uid: str = "driftmon-operations"
    performance_uid: str = "driftmon-performance"
    # Default of the `report_url` variable: where a browser reaches a driftmon daemon's /report
    # (a port-forward by default; set it to the Service's or Ingress's address).
    report_url: str = "http://localhost:9108"
    tags: tuple[str, ...] = ("driftmon",)
    refresh: str = "30s"
    time_from: str = "now-6h"
    schema_version: int = 39


CONFIG = Config()

# Values to substitute for every template variable the dashboards use, for tests that
# run the queries against a real Prometheus: match everything, 1m rate windows.
DEFAULT_VARIABLES: dict[str, str] = {
    "model": ".*",
    "feature": ".*",
    "__rate_interval": "1m",
}


# --------------------------------------------------------------------------- builders


def _legend(labels: tuple[str, ...]) -> str:
    """A legend naming a series by its label values ("{{model}} {{feature}}")."""
    return " ".join("{{%s}}" % label for label in labels)


class _Builder:
    """Builds the panels of one dashboard and lays them out on Grafana's 24-column grid."""

    def __init__(self, cfg: Config, extra_matchers: str = ""):
        self.cfg = cfg
        self.panels: list[dict] = []
        self._x = 0
        self._y = 0
        self._row_h = 0
        matchers = [cfg.selector, 'model=~"$model"']
        if extra_matchers:
            matchers.append(extra_matchers)
        self.sel = "{" + ", ".join(matchers) + "}"

    @property
    def datasource(self) -> dict:
        return {"type": "prometheus", "uid": "${%s}" % self.cfg.datasource_variable}

    def _place(self, w: int, h: int) -> dict:
        if self._x + w > 24:
            self._x, self._y, self._row_h = 0, self._y + self._row_h, 0
        pos = {"h": h, "w": w, "x": self._x, "y": self._y}
        self._x += w
        self._row_h = max(self._row_h, h)
        return pos

    def target(self, expr: str, legend: str = "", *, instant: bool = False, ref: str = "A") -> dict:
        t: dict[str, Any] = {
            "datasource": self.datasource,
            "editorMode": "code",
            "expr": expr,
            "legendFormat": legend or "__auto",
            "refId": ref,
        }
        if instant:
            t.update({"format": "table", "instant": True, "range": False})
        else:
            t.update({"instant": False, "range": True})
        return t

    def by(self, agg: str, metric: str, labels: tuple[str, ...] = ("model",), ref: str = "A") -> dict:
        """The target ``agg by (labels) (metric{selector})``: a line for each label set, named by its labels."""
        return self.target(f"{agg} by ({', '.join(labels)}) ({metric}{self.sel})", _legend(labels), ref=ref)

    def per_minute(self, title: str, description: str, counter: str, by: tuple[str, ...] = (), **kw) -> dict:
        """A time series of ``counter``'s increase per minute, summed by model and the ``by`` labels."""
        labels = ("model", *by)
        expr = f"60 * sum by ({', '.join(labels)}) (rate({counter}{self.sel}[$__rate_interval]))"
        return self.timeseries(title, description, "opm", [self.target(expr, _legend(labels))], min=0, **kw)

    def flag(self, title: str, description: str, targets: list[dict], mappings: list | None = None, **kw) -> dict:
        """A time series of a 0/1 state (steps between 0 and 1), its values named by ``mappings``."""
        return self.timeseries(title, description, "none", targets, min=0, max=1, step=True, mappings=mappings, **kw)

    def _panel(self, kind: str, title: str, description: str, unit: str, targets: list[dict],
               w: int, h: int, defaults: dict | None, options: dict, overrides: list | None) -> dict:
        for i, t in enumerate(targets):
            t["refId"] = chr(ord("A") + i)
        panel = {
            "datasource": self.datasource,
            "description": description,
            "fieldConfig": {
                "defaults": {"unit": unit, **(defaults or {})},
                "overrides": overrides or [],
            },
            "gridPos": self._place(w, h),
            "id": len(self.panels) + 1,
            "options": options,
            "targets": targets,
            "title": title,
            "type": kind,
        }
        self.panels.append(panel)
        return panel

    def timeseries(self, title: str, description: str, unit: str, targets: list[dict], *,
                   w: int = 12, h: int = 8, min: float | None = None, max: float | None = None,
                   step: bool = False, stack: bool = False, log: bool = False,
                   mappings: list | None = None) -> dict:
        custom: dict[str, Any] = {
            "drawStyle": "line",
            "fillOpacity": 10 if not stack else 30,
            "lineInterpolation": "stepAfter" if step else "linear",
            "lineWidth": 1,
            "showPoints": "never",
            "spanNulls": False,
            "stacking": {"group": "A", "mode": "normal" if stack else "none"},
        }
        if log:
            custom["scaleDistribution"] = {"type": "log", "log": 10}
        defaults: dict[str, Any] = {"custom": custom}
        if min is not None:
            defaults["min"] = min
        if max is not None:
            defaults["max"] = max
        if mappings:
            defaults["mappings"] = mappings
        options = {
            "legend": {"calcs": ["lastNotNull", "max"], "displayMode": "table", "placement": "bottom",
                       "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        }
        return self._panel("timeseries", title, description, unit, targets, w, h, defaults, options, None)

    def stat(self, title: str, description: str, unit: str, targets: list[dict], *, w: int = 6, h: int = 5,
             red_from: float | None = None, mappings: list | None = None) -> dict:
        steps = [{"color": "green", "value": None}]
        if red_from is not None:
            steps.append({"color": "red", "value": red_from})
        defaults: dict[str, Any] = {"thresholds": {"mode": "absolute", "steps": steps}, "color": {"mode": "thresholds"}}
        if mappings:
            defaults["mappings"] = mappings
        options = {
            "colorMode": "background" if red_from is not None else "value",
            "graphMode": "none",
            "justifyMode": "auto",
            "orientation": "auto",
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "textMode": "auto",
        }
        return self._panel("stat", title, description, unit, targets, w, h, defaults, options, None)

    def table(self, title: str, description: str, unit: str, columns: list[tuple[str, str, dict]],
              join_by: list[str], *, w: int = 24, h: int = 8, hide: tuple[str, ...] = ()) -> dict:
        """An instant-query table: one row per ``join_by`` label set, one column per (name, expr, props)."""
        targets = [self.target(expr, instant=True) for _, expr, _ in columns]
        # Grafana names the value field of a single instant query "Value", of several "Value #<refId>";
        # the organize transformation refers to fields by these original names.
        original = {name: "Value" if len(columns) == 1 else f"Value #{chr(ord('A') + i)}"
                    for i, (name, _, _) in enumerate(columns)}
        rename = {original[name]: name for name, _, _ in columns}
        index = {label: i for i, label in enumerate(join_by)}
        index.update({original[name]: len(join_by) + i for i, (name, _, _) in enumerate(columns)})
        overrides = [
            {"matcher": {"id": "byName", "options": name},
             "properties": [{"id": k, "value": v} for k, v in props.items()]}
            for name, _, props in columns if props
        ]
        panel = self._panel("table", title, description, unit, targets, w, h,
                            {"custom": {"align": "auto", "cellOptions": {"type": "auto"}}},
                            {"cellHeight": "sm", "showHeader": True,
                             "footer": {"show": False, "reducer": ["sum"], "fields": ""}},
                            overrides)
        panel["transformations"] = [
            {"id": "merge", "options": {}},
            {"id": "organize", "options": {
                "excludeByName": {"Time": True, **{original[k]: True for k in hide}},
                "indexByName": index,
                "renameByName": rename,
            }},
        ]
        return panel


def _datasource_variable(cfg: Config) -> dict:
    return {
        "current": {},
        "hide": 0,
        "includeAll": False,
        "label": "Data source",
        "multi": False,
        "name": cfg.datasource_variable,
        "options": [],
        "query": "prometheus",
        "refresh": 1,
        "regex": "",
        "skipUrlSync": False,
        "type": "datasource",
    }


def _query_variable(cfg: Config, name: str, label: str, query: str) -> dict:
    return {
        "allValue": ".*",
        "current": {},
        "datasource": {"type": "prometheus", "uid": "${%s}" % cfg.datasource_variable},
        "definition": query,
        "hide": 0,
        "includeAll": True,
        "label": label,
        "multi": True,
        "name": name,
        "options": [],
        "query": {"qryType": 1, "query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
        "refresh": 2,
        "regex": "",
        "skipUrlSync": False,
        "sort": 1,
        "type": "query",
    }


def _report_variable(cfg: Config) -> dict:
    return {
        "current": {"selected": False, "text": cfg.report_url, "value": cfg.report_url},
        "description": "Where your browser reaches the driftmon daemon, for the drift report links "
                       "(its /report page).",
        "hide": 0,
        "label": "driftmon URL",
        "name": "report_url",
        "options": [{"selected": True, "text": cfg.report_url, "value": cfg.report_url}],
        "query": cfg.report_url,
        "skipUrlSync": False,
        "type": "textbox",
    }


#: Panel link to the daemon's HTML drift report (distributions side by side, per-feature effects).
REPORT_LINK = {"targetBlank": True, "title": "Drift report (latest window, distributions side by side)",
               "url": "${report_url}/report"}


def _model_variable(cfg: Config) -> dict:
    return _query_variable(cfg, "model", "Model", f"label_values(driftmon_build_info{{{cfg.selector}}}, model)")


def _dashboard(cfg: Config, uid: str, title: str, description: str, panels: list[dict],
               variables: list[dict]) -> dict:
    return {
        "annotations": {"list": [{
            "builtIn": 1,
            "datasource": {"type": "grafana", "uid": "-- Grafana --"},
            "enable": True,
            "hide": True,
            "iconColor": "rgba(0, 211, 255, 1)",
            "name": "Annotations & Alerts",
            "type": "dashboard",
        }]},
        "description": description,
        "editable": True,
        "fiscalYearStartMonth": 0,
        "graphTooltip": 1,
        "id": None,
        "links": [{
            "asDropdown": False,
            "icon": "external link",
            "includeVars": True,
            "keepTime": True,
            "tags": list(cfg.tags),
            "targetBlank": False,
            "title": "driftmon",
            "type": "dashboards",
        }],
        "panels": panels,
        "refresh": cfg.refresh,
        "schemaVersion": cfg.schema_version,
        "tags": list(cfg.tags),
        "templating": {"list": [_datasource_variable(cfg), *variables]},
        "time": {"from": cfg.time_from, "to": "now"},
        "timepicker": {},
        "timezone": "browser",
        "title": title,
        "uid": uid,
        "version": 1,
        "weekStart": "",
    }


DRIFT_MAPPINGS = [{"type": "value", "options": {
    "0": {"text": "no drift", "color": "green", "index": 0},
    "1": {"text": "DRIFT", "color": "red", "index": 1},
}}]

BROKER_MAPPINGS = [{"type": "value", "options": {
    "0": {"text": "unreachable", "color": "red", "index": 0},
    "1": {"text": "up", "color": "green", "index": 1},
}}]


# --------------------------------------------------------------------------- dashboards


def overview(cfg: Config = CONFIG) -> dict:
    b = _Builder(cfg)
    s = b.sel
    b.stat("Models monitored",
           "Number of models (driftmon daemons) selected by the model variable that Prometheus currently scrapes.",
           "none", [b.target(f"count(max by (model) (driftmon_build_info{s}))")])
    b.stat("Models with drifting features",
           "Models whose latest evaluated window has at least one feature flagged as drifted. "
           "Red when any model drifts; the table below says which.",
           "none", [b.target(f"count(max by (model) (driftmon_features_drifted{s}) > 0) or vector(0)")], red_from=1)
    b.stat("Models with prediction drift",
           "Models whose latest evaluated window flags the distribution of predictions as drifted.",
           "none", [b.target(f"count(max by (model) (driftmon_prediction_drift_detected{s}) == 1) or vector(0)")],
           red_from=1)
    b.stat("driftmon alerts firing",
           "Alerts that the daemons themselves currently raise (driftmon_alerts_firing), summed over models "
           "and alert kinds. These are the alerts driftmon sends to its webhooks.",
           "none", [b.target(f"sum(driftmon_alerts_firing{s}) or vector(0)")], red_from=1)
    b.table("Drift status per model",
            "One row per model, from the latest evaluated window: how many features drift out of how many "
            "are monitored, whether predictions drift, how many of driftmon's own alerts fire, and how long ago "
            "the last window ended (a large age means driftmon is not evaluating: see the operations dashboard).",
            "none",
            [
                ("Features drifting", f"max by (model) (driftmon_features_drifted{s})", {}),
                ("Features monitored",
                 f"count by (model) (max by (model, feature) (driftmon_feature_drift_detected{s}))", {}),
                ("Prediction drift", f"max by (model) (driftmon_prediction_drift_detected{s})",
                 {"mappings": DRIFT_MAPPINGS, "custom.cellOptions": {"type": "color-background"}}),
                ("Alerts firing", f"sum by (model) (driftmon_alerts_firing{s})", {}),
                ("Last window age",
                 f"time() - max by (model) (driftmon_last_window_end_timestamp_seconds{s} > 0)", {"unit": "s"}),
            ],
            join_by=["model"])
    b.timeseries("Features drifting per model",
                 "Number of features flagged as drifted in each evaluated window, per model. It changes only "
                 "when a window closes, hence the steps.",
                 "none", [b.by("max", "driftmon_features_drifted")],
                 min=0, step=True)
    b.timeseries("Prediction drift score",
                 "Drift statistic of the model's predictions against the baseline, per method (psi, "
                 "jensen_shannon, wasserstein, ks, chi2). Methods have different scales: compare a line with "
                 "its own history, not with other methods.",
                 "none", [b.by("max", "driftmon_prediction_drift_score", ("model", "method"))], min=0)
    b.timeseries("driftmon alerts over time",
                 "Which of driftmon's own alerts (driftmon_alerts_firing, by alert kind) fire over time, per model.",
                 "none", [b.by("sum", "driftmon_alerts_firing", ("model", "alert"))],
                 min=0, step=True)
    b.per_minute("Windows evaluated",
                 "Windows evaluated per minute, per model. Zero for a long time means no new prediction logs "
                 "or a stuck daemon.",
                 "driftmon_windows_evaluated_total")
    b.timeseries("Throughput",
                 "Prediction-log messages consumed from Kafka per second, per model (valid and invalid).",
                 "mps", [b.target(f"sum by (model) (rate(driftmon_messages_consumed_total{s}[$__rate_interval]))",
                                  "{{model}}")], min=0)
    b.timeseries("Consumer lag",
                 "Messages in the Kafka topic not yet consumed, summed over partitions, per model. A growing "
                 "line means driftmon falls behind and drift results arrive late.",
                 "short", [b.by("sum", "driftmon_consumer_lag_messages")], min=0)
    b.timeseries("Multivariate drift",
                 "Models with `multivariate` configured: the statistic of each method in the last window it "
                 "judged (pca_reconstruction: shift of the mean reconstruction error in stds of the per-row "
                 "error, threshold 0.1 by default; domain_classifier: held-out ROC AUC, 0.5 = no difference, "
                 "threshold 0.55). Sees changes in how features move together that no single feature shows.",
                 "none", [b.by("max", "driftmon_multivariate_drift_score", ("model", "method")),
                          b.target(f"max by (model, method) (driftmon_multivariate_drift_detected{s})",
                                   "{{model}} {{method}} drift", ref="B")], w=24)
    return _dashboard(cfg, cfg.overview_uid, "driftmon / Overview",
                      "Drift status of every monitored model at a glance.", b.panels, [_model_variable(cfg)])


def feature(cfg: Config = CONFIG) -> dict:
    b = _Builder(cfg, 'feature=~"$feature"')
    s = b.sel
    b.table("Current feature status",
            "One row per model and feature, from the latest evaluated window: the drift decision, the p-value "
            "of the statistical test (small means the window differs from the baseline), and the share of "
            "missing, out-of-range and unseen-category values.",
            "none",
            [
                ("Drift", f"max by (model, feature) (driftmon_feature_drift_detected{s})",
                 {"mappings": DRIFT_MAPPINGS, "custom.cellOptions": {"type": "color-background"}}),
                ("p-value", f"min by (model, feature) (driftmon_feature_drift_p_value{s})", {"unit": "sci"}),
                ("Missing", f"max by (model, feature) (driftmon_feature_missing_ratio{s})", {"unit": "percentunit"}),
                ("Out of range", f"max by (model, feature) (driftmon_feature_out_of_range_ratio{s})",
                 {"unit": "percentunit"}),
                ("Unseen categories", f"max by (model, feature) (driftmon_feature_unseen_ratio{s})",
                 {"unit": "percentunit"}),
            ],
            join_by=["model", "feature"], h=9)
    b.timeseries("Drift score by method",
                 "Drift statistic of each selected feature against the baseline, one line per method (psi, "
                 "jensen_shannon, wasserstein, ks for numeric features; chi2 and psi for categorical ones). "
                 "Methods have different scales: compare a line with its own history.",
                 "none", [b.by("max", "driftmon_feature_drift_score", ("model", "feature", "method"))], w=24, min=0)
    b.flag("Drift decision",
           "1 when the feature is flagged as drifted in a window (both the effect size and the statistical "
           "test agree), 0 otherwise.",
           [b.by("max", "driftmon_feature_drift_detected", ("model", "feature"))], DRIFT_MAPPINGS)
    b.timeseries("Drift test p-value",
                 "p-value of the feature's drift test in each window (logarithmic axis). Lower means stronger "
                 "evidence that the window differs from the baseline; with large windows tiny differences "
                 "give tiny p-values, so read it together with the drift score.",
                 "sci", [b.by("min", "driftmon_feature_drift_p_value", ("model", "feature"))], log=True)
    b.timeseries("Missing ratio",
                 "Share of events in each window where the feature is absent or null.",
                 "percentunit", [b.by("max", "driftmon_feature_missing_ratio", ("model", "feature"))], w=8, min=0)
    b.timeseries("Out-of-range ratio",
                 "Share of the feature's values in each window outside the range seen in the baseline "
                 "(numeric features).",
                 "percentunit", [b.by("max", "driftmon_feature_out_of_range_ratio", ("model", "feature"))], w=8, min=0)
    b.timeseries("Unseen category ratio",
                 "Share of the feature's values in each window that are categories absent from the baseline "
                 "(categorical features only).",
                 "percentunit", [b.by("max", "driftmon_feature_unseen_ratio", ("model", "feature"))], w=8, min=0)
    for panel in b.panels:
        panel["links"] = [dict(REPORT_LINK)]
    # A row of the status table opens the report at that feature's distributions.
    b.panels[0]["fieldConfig"]["defaults"]["links"] = [{
        "targetBlank": True, "title": "Drift report: ${__data.fields.feature}",
        "url": "${report_url}/report#f-${__data.fields.feature}"}]
    feature_var = _query_variable(
        cfg, "feature", "Feature",
        f'label_values(driftmon_feature_drift_score{{{cfg.selector}, model=~"$model"}}, feature)')
    return _dashboard(cfg, cfg.feature_uid, "driftmon / Feature drift",
                      "Drift statistics and data quality of individual features.", b.panels,
                      [_model_variable(cfg), feature_var, _report_variable(cfg)])


def operations(cfg: Config = CONFIG) -> dict:
    b = _Builder(cfg)
    s = b.sel
    rate = "[$__rate_interval]"
    b.timeseries("Consumed messages",
                 "Prediction-log messages consumed from Kafka per second, per model (valid and invalid).",
                 "mps", [b.target(f"sum by (model) (rate(driftmon_messages_consumed_total{s}{rate}))", "{{model}}")],
                 w=8, min=0)
    b.timeseries("Invalid messages by reason",
                 "Messages rejected per second, per model and reason (not_json, wrong_type, missing_field, nan, null_value, "
                 "too_large, not_utf8, not_object, too_deep, bad_timestamp: README, Bad input). "
                 "Rejected messages are left out of drift detection.",
                 "mps", [b.target(f"sum by (model, reason) (rate(driftmon_messages_invalid_total{s}{rate}))",
                                  "{{model}} {{reason}}")], w=8, min=0, stack=True)
    b.timeseries("Invalid message ratio",
                 "Share of consumed messages that were rejected, per model. The DriftmonInvalidMessagesHigh alert "
                 "fires on this ratio.",
                 "percentunit", [b.target(
                     f"sum by (model) (rate(driftmon_messages_invalid_total{s}{rate}))\n/\n"
                     f"sum by (model) (rate(driftmon_messages_consumed_total{s}{rate}))", "{{model}}")],
                 w=8, min=0)
    b.timeseries("Batch processing time",
                 "Quantiles (50th, 90th, 99th percentile) of the time to decode and process one batch of "
                 "messages, from the driftmon_batch_processing_seconds histogram.",
                 "s", [b.target(f"histogram_quantile({q}, sum by (model, le) "
                                f"(rate(driftmon_batch_processing_seconds_bucket{s}{rate})))", f"{{{{model}}}} p{p}")
                       for q, p in ((0.5, 50), (0.9, 90), (0.99, 99))], min=0)
    b.timeseries("Batches processed",
                 "Batches processed per second, per model.",
                 "ops", [b.target(f"sum by (model) (rate(driftmon_batch_processing_seconds_count{s}{rate}))",
                                  "{{model}}")], min=0)
    b.timeseries("Consumer lag by partition",
                 "Messages not yet consumed, per model and Kafka partition. One growing partition points at a hot "
                 "or stuck partition; all growing means driftmon is too slow.",
                 "short", [b.target(f"sum by (model, partition) (driftmon_consumer_lag_messages{s})",
                                    "{{model}} p{{partition}}")], min=0)
    b.timeseries("Events in last window",
                 "Number of events in the latest evaluated window, per model. Small windows make drift tests "
                 "noisy.",
                 "short", [b.by("max", "driftmon_window_events")], min=0, step=True)
    b.flag("Broker reachable",
           "1 while a daemon's Kafka broker answers (its last probe succeeded or records arrived since), 0 "
           "while it is unreachable, per model and instance. After kafka.unavailable_after (30 s) at 0, "
           "/readyz answers 503; /healthz stays 200, so the pod is not restarted.",
           [b.by("min", "driftmon_broker_up", ("model", "instance"))], BROKER_MAPPINGS)
    b.timeseries("Time since last fetch",
                 "Seconds since each daemon had read everything assigned to it (now minus "
                 "driftmon_last_fetch_timestamp_seconds), per model and instance: freshness, not traffic, so it "
                 "stays low on an idle topic while the broker answers. It climbs during a broker outage or a stuck "
                 "consumer; the DriftmonNotReceivingData alert fires when no replica of a model is fresh for 5 min.",
                 "s", [b.target(f"time() - max by (model, instance) (driftmon_last_fetch_timestamp_seconds{s})",
                                "{{model}} {{instance}}")], min=0)
    b.per_minute("Notifications sent",
                 "Webhook notifications delivered per minute, per model, sink and alert.",
                 "driftmon_notifications_sent_total", ("sink", "alert"), w=8)
    b.per_minute("Notification failures",
                 "Failed notification deliveries per minute, per model, sink and reason. Failed notifications stay "
                 "in the outbox and are retried.",
                 "driftmon_notification_failures_total", ("sink", "reason"), w=8)
    b.timeseries("Outbox pending",
                 "Notifications waiting in the outbox for (re)delivery, per model. It should drain to zero; "
                 "a steady climb means a sink is down.",
                 "short", [b.by("max", "driftmon_outbox_pending")], w=8, min=0)
    b.per_minute("Checkpoints",
                 "State checkpoints written per minute, per model. Zero while messages flow means offsets are "
                 "not committed and a restart would reprocess them.",
                 "driftmon_checkpoints_total", w=8)
    b.per_minute("State write failures",
                 "Failed writes to the state directory per minute, per model and target (checkpoint, window_log, "
                 "outbox, labels: the join store): a full or read-only disk. driftmon retries with backoff and commits nothing past its "
                 "last durable checkpoint; the DriftmonStateWritesFailing alert fires on this.",
                 "driftmon_state_write_failures_total", ("target",), w=8)
    b.timeseries("Consumption paused",
                 "1 while a model's daemon has paused consumption because a closed window cannot be made durable "
                 "(see State write failures); it resumes by itself once the disk takes writes.",
                 "none", [b.by("max", "driftmon_consumption_paused")],
                 w=8, min=0, step=True)
    # The process collector's series carry no `model` label of their own: take it from
    # driftmon_build_info of the same target, which also applies the model filter.
    job = "{" + cfg.selector + "}"
    with_model = f"* on (job, instance) group_left (model) max by (job, instance, model) (driftmon_build_info{s})"
    b.timeseries("CPU usage",
                 "CPU time used per second by each driftmon process (100% = one core).",
                 "percentunit", [b.target(
                     f"sum by (model, instance) (\n  rate(process_cpu_seconds_total{job}{rate})\n  {with_model}\n)",
                     "{{model}} {{instance}}")], w=8, min=0)
    b.timeseries("Resident memory",
                 "Resident memory (RSS) of each driftmon process.",
                 "bytes", [b.target(
                     f"sum by (model, instance) (\n  process_resident_memory_bytes{job}\n  {with_model}\n)",
                     "{{model}} {{instance}}")], w=8, min=0)
    b.table("Build info",
            "Version and baseline fingerprint of each running daemon. Two fingerprints for one model mean "
            "replicas disagree about the baseline.",
            "none",
            [("Up", f"max by (model, instance, version, baseline_fingerprint) (driftmon_build_info{s})", {})],
            join_by=["model", "instance", "version", "baseline_fingerprint"], h=6, hide=("Up",))
    return _dashboard(cfg, cfg.operations_uid, "driftmon / Operations",
                      "Health of the driftmon daemons: consumption, processing time, notifications, resources.",
                      b.panels, [_model_variable(cfg)])


def performance(cfg: Config = CONFIG) -> dict:
    b = _Builder(cfg)
    s = b.sel
    all_ = s[:-1] + ', segment="all"}'
    seg = s[:-1] + ', segment!="all"}'
    b.timeseries("Performance vs baseline",
                 "Realized performance of each labelled window (solid) against the same metric on the baseline's "
                 "labelled data (the constant lines), per model and metric. Accuracy, precision, recall, F1 and "
                 "ROC AUC are better when higher; log loss and calibration error when lower.",
                 "none", [b.target(f"max by (model, metric) (driftmon_performance{all_})", "{{model}} {{metric}}"),
                          b.target(f"max by (model, metric) (driftmon_baseline_performance{s})",
                                   "{{model}} {{metric}} (baseline)")], w=24, step=True)
    b.timeseries("Estimated performance (no labels)",
                 "Accuracy, precision, recall and F1 estimated from the calibrated scores of every drift window, "
                 "before any label arrives (confidence-based estimation). A drop here warns ahead of the labels; "
                 "it cannot see concept drift.",
                 "percentunit", [b.by("max", "driftmon_estimated_performance", ("model", "metric"))],
                 min=0, max=1, step=True)
    b.flag("Performance drops",
           "1 when a metric, overall or for a segment value, is worse than the baseline by more than the "
           "configured margin with statistical confidence in the last labelled window.",
           [b.target(f"max by (model, metric, segment) (driftmon_performance_drop_detected{s})",
                     "{{model}} {{segment}} {{metric}}")])
    b.timeseries("Performance by segment",
                 "Realized performance per segment value (top values of each segment field, the rest as other), "
                 "per metric: a model can fail one segment while the average looks fine.",
                 "none", [b.target(f"max by (model, segment, metric) (driftmon_performance{seg})",
                                   "{{model}} {{segment}} {{metric}}")], step=True)
    b.timeseries("Features drifting per segment",
                 "Number of features that drifted within each segment value in the last window.",
                 "none", [b.by("max", "driftmon_segment_features_drifted", ("model", "segment"))], min=0, step=True)
    b.timeseries("Demographic parity ratio",
                 "Lowest over highest rate of favourable predictions across the groups of each sensitive "
                 "attribute (groups with enough events only). Below 0.8 breaks the four-fifths rule.",
                 "percentunit", [b.by("min", "driftmon_fairness_parity_ratio", ("model", "attribute"))],
                 min=0, max=1, step=True)
    b.timeseries("Favourable prediction rate by group",
                 "Share of favourable predictions per group of each sensitive attribute, in the last labelled "
                 "window.",
                 "percentunit", [b.target(f"max by (model, attribute, group) (driftmon_fairness_positive_rate{s})",
                                          "{{model}} {{attribute}}={{group}}")], min=0, max=1, step=True)
    b.timeseries("Labels joined",
                 "Labels received, matched to their prediction, and expired unmatched (TTL or cap), per second.",
                 "ops", [b.target(f"sum by (model) (rate(driftmon_labels_received_total{s}[$__rate_interval]))",
                                  "{{model}} received"),
                         b.target(f"sum by (model) (rate(driftmon_labels_matched_total{s}[$__rate_interval]))",
                                  "{{model}} matched"),
                         b.target(f"sum by (model) (rate(driftmon_labels_expired_total{s}[$__rate_interval]))",
                                  "{{model}} expired")], w=8, min=0)
    b.timeseries("Labels pending",
                 "Predictions waiting for their label plus labels waiting for their prediction.",
                 "none", [b.by("sum", "driftmon_labels_pending")], w=8, min=0)
    b.timeseries("Label delay",
                 "Median and 95th percentile of the time from a prediction to its label.",
                 "s", [b.target("histogram_quantile(0.5, sum by (model, le) "
                                f"(rate(driftmon_label_delay_seconds_bucket{s}[$__rate_interval])))", "{{model}} p50"),
                       b.target("histogram_quantile(0.95, sum by (model, le) "
                                f"(rate(driftmon_label_delay_seconds_bucket{s}[$__rate_interval])))", "{{model}} p95")],
                 w=8, min=0)
    b.timeseries("Error-rate changes",
                 "Rises of the per-prediction error rate detected inside windows by the sequential detector "
                 "(ADWIN), per interval.",
                 "none", [b.target(f"sum by (model) (increase(driftmon_error_rate_changes_total{s}[$__rate_interval]))",
                                   "{{model}}")], w=24, min=0)
    return _dashboard(cfg, cfg.performance_uid, "driftmon / Performance and fairness",
                      "Model performance from late labels, estimated performance, segments and group fairness.",
                      b.panels, [_model_variable(cfg)])


def dashboards(cfg: Config = CONFIG) -> dict[str, dict]:
    """File name -> dashboard, for every dashboard this generator owns."""
    return {
        "driftmon-overview.json": overview(cfg),
        "driftmon-feature.json": feature(cfg),
        "driftmon-operations.json": operations(cfg),
        "driftmon-performance.json": performance(cfg),
    }


def render(dashboard: Mapping) -> str:
    return json.dumps(dashboard, indent=2, ensure_ascii=False) + "\n"


# --------------------------------------------------------------------------- helpers for tests

_VARIABLE = re.compile(r"\$\{(\w+)(?::[^}]*)?\}|\[\[(\w+)(?::[^\]]*)?\]\]|\$(\w+)")


def substitute(expr: str, variables: Mapping[str, str]) -> str:
    """Replace Grafana template variables (``$x``, ``${x}``, ``${x:fmt}``, ``[[x]]``) in ``expr``.

    Raises ``KeyError`` naming the variable when ``variables`` lacks one the query uses.
    """
    def repl(m: re.Match) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        if name not in variables:
            raise KeyError(f"no value for template variable ${name} in {expr!r}")
        return variables[name]

    return _VARIABLE.sub(repl, expr)


def _walk_panels(panels: list) -> list[dict]:
    out = []
    for panel in panels:
        out.append(panel)
        out.extend(_walk_panels(panel.get("panels", [])))  # panels inside (collapsed) rows
    return out


def iter_panel_queries(dashboard: Mapping, variables: Mapping[str, str]) -> list[tuple[str, str]]:
    """Every PromQL query of ``dashboard`` as ``(panel_title, expr)``, with template variables substituted.

    A panel with several targets yields one pair per target, in target order. ``variables`` maps a
    variable name without ``$`` to its value (e.g. :data:`DEFAULT_VARIABLES`); a variable the
    dashboard uses but ``variables`` lacks raises ``KeyError``.
    """
    out = []
    for panel in _walk_panels(dashboard.get("panels", [])):
        for target in panel.get("targets", []):
            if target.get("hide") or not target.get("expr"):
                continue
            out.append((panel["title"], substitute(target["expr"], variables)))
    return out


def load_dashboards(directory: Path = OUTPUT_DIR) -> dict[str, dict]:
    """The committed dashboards, by uid."""
    result = {}
    for path in sorted(directory.glob("*.json")):
        d = json.loads(path.read_text())
        result[d["uid"]] = d
    return result


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a committed dashboard is stale")
    args = parser.parse_args(argv)
    wanted = {name: render(d) for name, d in dashboards().items()}
    if args.check:
        stale = [n for n, text in wanted.items()
                 if not (OUTPUT_DIR / n).exists() or (OUTPUT_DIR / n).read_text() != text]
        extra = sorted(p.name for p in OUTPUT_DIR.glob("*.json") if p.name not in wanted)
        for n in stale:
            print(f"stale: grafana/dashboards/{n}", file=sys.stderr)
        for n in extra:
            print(f"not generated: grafana/dashboards/{n}", file=sys.stderr)
        return 1 if stale or extra else 0
    OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    for name, text in wanted.items():
        (OUTPUT_DIR / name).write_text(text)
        print(f"wrote grafana/dashboards/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
