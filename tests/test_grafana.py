"""Checks of the Grafana dashboards in grafana/dashboards/.

- the committed JSON is exactly what grafana/generate.py produces;
- every panel has a description, a (real Grafana) unit, and queries that go to the ${datasource}
  variable, select the driftmon job and `model=~"$model"`, and use $__rate_interval in rates;
- every query is valid PromQL: variables substituted, the queries are written into a temporary
  recording-rules file and `promtool check rules` parses them (promtool 2.42 has no command for a
  bare expression); a deliberately broken query proves that check can fail;
- every metric name comes from the metric table of docs/DESIGN.md.

Needs `promtool` (Debian package `prometheus`) on PATH.
"""

import re
import subprocess
from pathlib import Path

import pytest

from tests.helpers import load_module, promtool, report
import yaml

ROOT = Path(__file__).resolve().parents[1]
GRAFANA_DIR = ROOT / "grafana"
DASHBOARD_DIR = GRAFANA_DIR / "dashboards"
DESIGN = ROOT / "docs" / "DESIGN.md"
DASHBOARDS_DOC = ROOT / "docs" / "dashboards.md"

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
MODEL_MATCHER = 'model=~"$model"'
JOB_MATCHER = 'job="driftmon"'

# Unit ids that exist in Grafana (packages/grafana-data/src/valueFormats/categories.ts).
GRAFANA_UNITS = {
    "none", "short", "sishort", "percent", "percentunit", "sci", "locale",
    "s", "ms", "µs", "ns", "m", "h", "d", "dtdurations", "dateTimeFromNow", "dateTimeAsIso",
    "bytes", "decbytes", "bits", "Bps", "binBps",
    "ops", "reqps", "rps", "wps", "iops", "eps", "mps", "recps", "rowsps",
    "cpm", "opm", "reqpm", "rpm", "wpm", "epm", "mpm", "recpm", "rowspm",
}


gen = load_module(GRAFANA_DIR / "generate.py", "driftmon_grafana_generate")
COMMITTED = gen.load_dashboards(DASHBOARD_DIR)


def _panels(dashboard):
    return gen._walk_panels(dashboard["panels"])


PANELS = [(uid, panel) for uid, d in COMMITTED.items() for panel in _panels(d)]
PANEL_IDS = [f"{uid}/{panel['title']}" for uid, panel in PANELS]






def check_promql(exprs: list[tuple[str, str]], tmp_path: Path) -> subprocess.CompletedProcess:
    """Parse (name, expr) pairs with promtool by writing them as recording rules."""
    rules = [{"record": f"grafana:query_{i:03d}", "expr": expr} for i, (_, expr) in enumerate(exprs)]
    path = tmp_path / "queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "grafana-queries", "rules": rules}]}, sort_keys=False))
    return promtool("check", "rules", path)


def _where(exprs) -> str:
    return "\n".join(f"grafana:query_{i:03d} = {name}: {expr}" for i, (name, expr) in enumerate(exprs))


def allowed_series_names() -> set[str]:
    names = set()
    for m in re.finditer(r"^\|\s*(driftmon_\w+)\s*\|\s*([^|]+?)\s*\|", DESIGN.read_text(), re.M):
        names.add(m.group(1))
        if m.group(2).startswith("histogram"):
            names.update({f"{m.group(1)}_{s}" for s in ("bucket", "sum", "count")})
    assert names, "no metric table found in docs/DESIGN.md"
    # The process collector, listed under the table.
    return names | {"process_cpu_seconds_total", "process_resident_memory_bytes"}


def _selectors(expr: str) -> list[tuple[str, str]]:
    """(metric name, matchers) of every vector selector in expr (all of ours carry matchers)."""
    return re.findall(r"\b([a-zA-Z_:][\w:]*)\s*\{([^}]*)\}", expr)


# ----------------------------------------------------------------------------- generator


def test_committed_dashboards_equal_generator_output():
    wanted = gen.dashboards()
    on_disk = sorted(p.name for p in DASHBOARD_DIR.glob("*.json"))
    assert on_disk == sorted(wanted), "grafana/dashboards/ holds files the generator does not produce"
    for name, dashboard in wanted.items():
        assert (DASHBOARD_DIR / name).read_text() == gen.render(dashboard), (
            f"grafana/dashboards/{name} is stale: run python grafana/generate.py"
        )


def test_generator_check_mode_agrees():
    proc = subprocess.run(["python", str(GRAFANA_DIR / "generate.py"), "--check"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_stable_uids_and_titles():
    assert set(COMMITTED) == {"driftmon-overview", "driftmon-feature", "driftmon-operations", "driftmon-performance"}
    for d in COMMITTED.values():
        assert d["id"] is None, "exported dashboards carry no instance-specific id"
        assert 36 <= d["schemaVersion"] <= 41
        assert d["title"].startswith("driftmon / ")
        assert "driftmon" in d["tags"]


# ----------------------------------------------------------------------------- templating


def _variables(dashboard) -> dict[str, dict]:
    return {v["name"]: v for v in dashboard["templating"]["list"]}


@pytest.mark.parametrize("uid", sorted(COMMITTED))
def test_datasource_and_model_variables(uid):
    variables = _variables(COMMITTED[uid])
    ds = variables["datasource"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    model = variables["model"]
    assert model["type"] == "query"
    assert model["datasource"] == DATASOURCE
    assert model["definition"] == model["query"]["query"] == f"label_values(driftmon_build_info{{{JOB_MATCHER}}}, model)"
    assert model["multi"] is True and model["includeAll"] is True


def test_feature_variable():
    feature = _variables(COMMITTED["driftmon-feature"])["feature"]
    assert feature["datasource"] == DATASOURCE
    assert feature["query"]["query"] == (
        f'label_values(driftmon_feature_drift_score{{{JOB_MATCHER}, {MODEL_MATCHER}}}, feature)'
    )
    assert feature["multi"] is True and feature["includeAll"] is True


def test_no_hard_coded_datasource_uid():
    def walk(node, path="$"):
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "datasource" and isinstance(value, dict):
                    if value.get("type") == "grafana":  # the built-in annotation source
                        assert value.get("uid") == "-- Grafana --", path
                    else:
                        assert value == DATASOURCE, f"{path}.datasource = {value}"
                walk(value, f"{path}.{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{path}[{i}]")

    for d in COMMITTED.values():
        walk(d)


# ----------------------------------------------------------------------------- panels


@pytest.mark.parametrize("uid,panel", PANELS, ids=PANEL_IDS)
def test_panel_conventions(uid, panel):
    assert panel["type"] in {"timeseries", "stat", "table"}
    assert panel["description"].strip(), "every panel explains itself"
    unit = panel["fieldConfig"]["defaults"].get("unit")
    assert unit in GRAFANA_UNITS, f"unit {unit!r} is missing or not a Grafana unit"
    for override in panel["fieldConfig"]["overrides"]:
        for prop in override["properties"]:
            if prop["id"] == "unit":
                assert prop["value"] in GRAFANA_UNITS
    assert panel["datasource"] == DATASOURCE
    assert panel["targets"], "a panel without a query"
    for target in panel["targets"]:
        assert target["datasource"] == DATASOURCE
        expr = target["expr"]
        assert "$model" in expr
        selectors = _selectors(expr)
        assert selectors, expr
        for name, matchers in selectors:
            assert JOB_MATCHER in matchers, f"{name}{{{matchers}}} in {expr}"
            if name.startswith("process_"):
                # Process-collector series have no `model` label: it comes from a join with build info.
                assert "group_left (model)" in expr
                assert f"driftmon_build_info{{{JOB_MATCHER}, {MODEL_MATCHER}}}" in expr
            else:
                assert MODEL_MATCHER in matchers, f"{name}{{{matchers}}} in {expr}"
        # Every range in a query is a rate window, and rate windows are $__rate_interval.
        assert set(re.findall(r"\[([^\]]*)\]", expr)) <= {"$__rate_interval"}, expr
        if re.search(r"\b(rate|irate|increase)\(", expr):
            assert "[$__rate_interval]" in expr


@pytest.mark.parametrize("uid", sorted(COMMITTED))
def test_layout(uid):
    panels = _panels(COMMITTED[uid])
    titles = [p["title"] for p in panels]
    assert len(titles) == len(set(titles)), "titles are unique: iter_panel_queries names panels by title"
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    cells = set()
    for p in panels:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["w"] > 0 and g["x"] + g["w"] <= 24, p["title"]
        box = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not box & cells, f"{p['title']} overlaps another panel"
        cells |= box


def test_metric_names_follow_contract():
    allowed = allowed_series_names()
    used = {name for _, panel in PANELS for t in panel["targets"] for name, _ in _selectors(t["expr"])}
    assert used <= allowed, f"not in the DESIGN.md metric table: {sorted(used - allowed)}"


def test_required_content():
    """What each dashboard is for, in terms of the series it must show."""
    def series(uid):
        return {name for p in _panels(COMMITTED[uid]) for t in p["targets"] for name, _ in _selectors(t["expr"])}

    assert {"driftmon_features_drifted", "driftmon_prediction_drift_detected", "driftmon_alerts_firing",
            "driftmon_windows_evaluated_total", "driftmon_messages_consumed_total",
            "driftmon_consumer_lag_messages"} <= series("driftmon-overview")
    assert {"driftmon_feature_drift_score", "driftmon_feature_drift_detected", "driftmon_feature_drift_p_value",
            "driftmon_feature_missing_ratio", "driftmon_feature_out_of_range_ratio"} <= series("driftmon-feature")
    assert {"driftmon_messages_consumed_total", "driftmon_messages_invalid_total",
            "driftmon_batch_processing_seconds_bucket", "driftmon_notifications_sent_total",
            "driftmon_notification_failures_total", "driftmon_outbox_pending", "driftmon_checkpoints_total",
            "process_cpu_seconds_total", "process_resident_memory_bytes", "driftmon_broker_up",
            "driftmon_last_fetch_timestamp_seconds"} <= series("driftmon-operations")
    feature_panels = _panels(COMMITTED["driftmon-feature"])
    assert all('feature=~"$feature"' in t["expr"] for p in feature_panels for t in p["targets"])


# ----------------------------------------------------------------------------- PromQL validity


def test_every_query_parses_with_promtool(tmp_path):
    exprs = [(f"{uid} / {title}", expr)
             for uid, d in COMMITTED.items()
             for title, expr in gen.iter_panel_queries(d, gen.DEFAULT_VARIABLES)]
    # The selectors inside the label_values() variable queries must parse too.
    for uid, d in COMMITTED.items():
        for v in d["templating"]["list"]:
            if v["type"] == "query":
                m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", v["query"]["query"])
                assert m, v["query"]
                exprs.append((f"{uid} / variable {v['name']}", gen.substitute(m.group(1), gen.DEFAULT_VARIABLES)))
    assert len(exprs) > 30
    proc = check_promql(exprs, tmp_path)
    assert proc.returncode == 0, report(proc) + "\n" + _where(exprs)
    assert f"SUCCESS: {len(exprs)} rules found" in proc.stdout, report(proc)


def test_promql_check_rejects_a_broken_query(tmp_path):
    broken = [("broken", gen.substitute(
        'sum by (model) (rate(driftmon_messages_consumed_total{job="driftmon", model=~"$model"}[$__rate_interval])',
        gen.DEFAULT_VARIABLES))]
    proc = check_promql(broken, tmp_path)
    assert proc.returncode != 0, report(proc)


# ----------------------------------------------------------------------------- iter_panel_queries


def test_iter_panel_queries_substitutes_every_variable():
    for uid, d in COMMITTED.items():
        pairs = gen.iter_panel_queries(d, gen.DEFAULT_VARIABLES)
        assert len(pairs) == sum(len(p["targets"]) for p in _panels(d))
        titles = {p["title"] for p in _panels(d)}
        for title, expr in pairs:
            assert title in titles
            assert "$" not in expr and "[[" not in expr, expr
            assert 'model=~".*"' in expr
            assert "[1m]" in expr or "rate(" not in expr


def test_iter_panel_queries_variable_forms_and_missing_variable():
    d = {"panels": [{"title": "t", "targets": [
        {"expr": 'x{a=~"$model", b="${feature}", c="${feature:regex}", d="[[model]]"}[$__rate_interval]'},
        {"expr": "", "refId": "B"},
    ]}]}
    assert gen.iter_panel_queries(d, {"model": "m", "feature": "f", "__rate_interval": "2m"}) == [
        ("t", 'x{a=~"m", b="f", c="f", d="m"}[2m]')
    ]
    with pytest.raises(KeyError, match="__rate_interval"):
        gen.iter_panel_queries(d, {"model": "m", "feature": "f"})


# ----------------------------------------------------------------------------- docs


def test_dashboards_doc_describes_every_panel():
    doc = DASHBOARDS_DOC.read_text()
    for uid, d in COMMITTED.items():
        assert d["title"] in doc, d["title"]
        for p in _panels(d):
            assert f"**{p['title']}**" in doc, f"docs/dashboards.md does not describe {uid} / {p['title']}"


def test_feature_panels_link_to_the_drift_report():
    dashboard = COMMITTED["driftmon-feature"]
    variable = _variables(dashboard)["report_url"]
    assert variable["type"] == "textbox" and variable["query"].startswith("http")
    for panel in _panels(dashboard):
        assert [link["url"] for link in panel["links"]] == ["${report_url}/report"], panel["title"]
    status = _panels(dashboard)[0]
    assert status["fieldConfig"]["defaults"]["links"][0]["url"] == "${report_url}/report#f-${__data.fields.feature}"
