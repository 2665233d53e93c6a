"""Checks of the Prometheus alerting rules in deploy/prometheus/.

- the committed rules file is exactly what deploy/prometheus/generate.py produces;
- `promtool check rules` accepts it and `promtool test rules` passes its unit tests;
- every alert has a severity, a `for`, a summary, a description and a runbook URL whose anchor
  is a section of docs/runbook.md, and is unit-tested both firing and not firing;
- the metric table of docs/DESIGN.md lists every family of monitor/metrics.py, with its type, and no other;
- the checks themselves can fail: promtool rejects a broken rule, and the unit tests reject
  rules generated with a different threshold.

Needs `promtool` (Debian package `prometheus`) on PATH.
"""
from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers import load_module, promtool, report
import yaml

ROOT = Path(__file__).resolve().parents[1]
PROM_DIR = ROOT / "deploy" / "prometheus"
RULES = PROM_DIR / "driftmon-rules.yml"
UNIT_TESTS = sorted((PROM_DIR / "tests").glob("*.yml"))
RUNBOOK = ROOT / "docs" / "runbook.md"
DESIGN = ROOT / "docs" / "DESIGN.md"


gen = load_module(PROM_DIR / "generate.py", "driftmon_rules_generate")






def _alerts() -> list[dict]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"] if "alert" in rule]


ALERTS = _alerts()
ALERT_IDS = [a["alert"] for a in ALERTS]


def github_anchors(markdown: str) -> set[str]:
    """Anchors GitHub generates for the headings of a Markdown file, plus explicit <a id=...>."""
    anchors = set()
    in_code = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            in_code = not in_code
            continue
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m and not in_code:
            text = re.sub(r"`", "", m.group(1)).strip().lower()
            anchors.add(re.sub(r"\s", "-", re.sub(r"[^\w\- ]", "", text)))
    anchors.update(re.findall(r'<a\s+(?:id|name)="([^"]+)"', markdown))
    return anchors


def contract_metrics() -> dict[str, str]:
    """Metric name -> type, from the metric table of docs/DESIGN.md (the naming contract)."""
    metrics = {}
    for m in re.finditer(r"^\|\s*(driftmon_\w+)\s*\|\s*([^|]+?)\s*\|", DESIGN.read_text(), re.M):
        metrics[m.group(1)] = m.group(2)
    assert metrics, "no metric table found in docs/DESIGN.md"
    return metrics


def allowed_series_names() -> set[str]:
    names = set()
    for name, kind in contract_metrics().items():
        names.add(name)
        if kind.startswith("histogram"):
            names.update({f"{name}_bucket", f"{name}_sum", f"{name}_count"})
    return names


# ----------------------------------------------------------------------------- promtool


def test_promtool_check_rules():
    proc = promtool("check", "rules", RULES)
    assert proc.returncode == 0, report(proc)
    assert f"SUCCESS: {len(ALERTS)} rules found" in proc.stdout, report(proc)


def test_promtool_unit_tests():
    assert UNIT_TESTS, "no promtool unit tests in deploy/prometheus/tests/"
    proc = promtool("test", "rules", *UNIT_TESTS)
    assert proc.returncode == 0, report(proc)


def test_promtool_rejects_a_broken_rule(tmp_path):
    broken = tmp_path / "broken.yml"
    broken.write_text(
        "groups:\n"
        "- name: broken\n"
        "  rules:\n"
        "  - alert: Broken\n"
        "    expr: sum by (model) (rate(driftmon_messages_consumed_total{job=\"driftmon\"}[5m]) > 0\n"
        "    for: 5m\n"
    )
    proc = promtool("check", "rules", broken)
    assert proc.returncode != 0, report(proc)
    assert "Broken" in proc.stdout + proc.stderr or "parse error" in proc.stdout + proc.stderr, report(proc)


def test_unit_tests_reject_rules_with_another_threshold(tmp_path):
    """The promtool unit tests pin behaviour: a changed threshold makes them fail."""
    shutil.copytree(PROM_DIR / "tests", tmp_path / "tests")
    mutated = dataclasses.replace(gen.CONFIG, outbox_pending=1000)
    (tmp_path / "driftmon-rules.yml").write_text(gen.render(mutated))
    proc = promtool("test", "rules", *sorted((tmp_path / "tests").glob("*.yml")))
    assert proc.returncode != 0, report(proc)
    assert "DriftmonOutboxBackingUp" in proc.stdout + proc.stderr, report(proc)


# ----------------------------------------------------------------------------- generator


def test_committed_rules_equal_generator_output():
    assert RULES.read_text() == gen.render(), (
        "deploy/prometheus/driftmon-rules.yml is stale: run python deploy/prometheus/generate.py"
    )


def test_generator_check_mode_agrees():
    proc = subprocess.run(
        ["python", str(PROM_DIR / "generate.py"), "--check"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr


# ----------------------------------------------------------------------------- each alert


def test_alert_names_are_unique():
    assert len(ALERT_IDS) == len(set(ALERT_IDS))


@pytest.mark.parametrize("alert", ALERTS, ids=ALERT_IDS)
def test_alert_is_complete(alert):
    assert alert["labels"]["severity"] in {"warning", "critical"}
    assert re.fullmatch(r"\d+[smh]", alert["for"]), alert["for"]
    annotations = alert["annotations"]
    assert annotations["summary"].strip()
    description = annotations["description"]
    assert "$value" in description, "the description should show the value that triggered the alert"
    if alert["alert"] != "DriftmonAbsent":  # absent() keeps only its selector's labels: no model exists
        assert "$labels.model" in description
    assert 'job="driftmon"' in alert["expr"], "every alert selects the driftmon scrape job"


@pytest.mark.parametrize("alert", ALERTS, ids=ALERT_IDS)
def test_runbook_url_points_to_a_runbook_section(alert):
    url = alert["annotations"]["runbook_url"]
    base, _, anchor = url.partition("#")
    assert base == gen.CONFIG.runbook_base_url
    assert base.endswith("docs/runbook.md")
    assert anchor in github_anchors(RUNBOOK.read_text()), f"docs/runbook.md has no section #{anchor}"


@pytest.mark.parametrize("alert", ALERTS, ids=ALERT_IDS)
def test_alert_uses_contract_metric_names(alert):
    allowed = allowed_series_names() | {"up"}
    used = set(re.findall(r"\b((?:driftmon_|process_)\w+|up)\s*\{", alert["expr"]))
    assert used, alert["expr"]
    assert used <= allowed, f"not in the DESIGN.md metric table: {sorted(used - allowed)}"


def test_every_alert_is_unit_tested_firing_and_not_firing():
    firing, silent = set(), set()
    for path in UNIT_TESTS:
        for test in yaml.safe_load(path.read_text())["tests"]:
            for case in test.get("alert_rule_test", []):
                (firing if case.get("exp_alerts") else silent).add(case["alertname"])
    assert set(ALERT_IDS) - firing == set(), "alerts never tested firing"
    assert set(ALERT_IDS) - silent == set(), "alerts never tested staying silent"
    assert (firing | silent) <= set(ALERT_IDS), "unit tests name alerts that do not exist"


def test_runbook_has_no_section_for_a_missing_alert():
    sections = set(re.findall(r"^## (Driftmon\w+)\s*$", RUNBOOK.read_text(), re.M))
    assert sections == set(ALERT_IDS)


def test_design_metric_table_is_every_metric_of_monitor_metrics():
    """The naming contract lists each family monitor/metrics.py defines, with its type, and nothing else."""
    from monitor.metrics import NAMES, PREFIX

    defined = {PREFIX + key + ("_total" if kind == "counter" else ""): kind for key, (kind, _help) in NAMES.items()}
    documented = contract_metrics()
    assert sorted(set(defined) - set(documented)) == [], "defined in monitor/metrics.py, missing from DESIGN.md"
    assert sorted(set(documented) - set(defined)) == [], "in DESIGN.md's metric table, not in monitor/metrics.py"
    wrong = {n: (documented[n], kind) for n, kind in defined.items() if documented[n].split()[0] != kind}
    assert wrong == {}, "DESIGN.md type vs monitor/metrics.py type"
