"""`driftmon report`: the HTML drift report, opened in a real headless Chromium."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from monitor.report import load_windows
from monitor.synth import Synth, _Spec, car_loan
from tests.browser import Chromium, chromium_binary
from tests.helpers import read_jsonl, write_jsonl, write_setup

# A missing browser fails the browser tests (Chromium() says why), except outside CI with the project-wide
# opt-in DRIFTMON_ALLOW_SKIP=1 for machines without the test tools.
needs_chromium = pytest.mark.skipif(
    chromium_binary() is None and not os.environ.get("CI") and os.environ.get("DRIFTMON_ALLOW_SKIP") == "1",
    reason="chromium is not installed (scripts/setup.sh installs it)")

#: Where the tests leave their screenshots (CI can keep them as artifacts).
SHOTS = os.environ.get("DRIFTMON_SCREENSHOTS")


def driftmon(*args, check=True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "monitor.cli", *args], capture_output=True, text=True, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture(scope="module")
def car(tmp_path_factory):
    """A car-loan setup and the window log of a stream whose inputs drift after 40%."""
    tmp = tmp_path_factory.mktemp("report")
    synth = car_loan(seed=5)
    path, config = write_setup(tmp, synth, window={"size": 4000})
    write_jsonl(tmp / "logs.jsonl", synth.messages(24_000, drift_at=9_600))
    driftmon("replay", "--config", path, "--input", str(tmp / "logs.jsonl"), "--out", str(tmp / "windows.jsonl"))
    return tmp, path, read_jsonl(tmp / "windows.jsonl")


def wide_synth(n_features: int, drifting: int, seed: int = 0) -> Synth:
    """``n_features`` features (numeric and categorical, some with many levels); the first ``drifting`` drift."""
    specs = []
    for j in range(n_features):
        moves = j < drifting
        if j % 4 == 3:
            levels = [f"v{k}" for k in range(3 + j % 40)]
            shares = np.linspace(3, 1, len(levels))
            drawn = (lambda lv, sh: (lambda r, n: r.choice(lv, size=n, p=sh / sh.sum())))(levels, shares)
            drift = (lambda lv, sh: (lambda r, n: r.choice(lv, size=n, p=sh[::-1] / sh.sum())))(levels, shares)
            specs.append(_Spec(f"cat_{j:03d}", "categorical", drawn, drift if moves else None))
        else:
            scale = 1.0 + j % 7
            drawn = (lambda s: (lambda r, n: np.round(r.gamma(2.0, s, n), 4)))(scale)
            drift = (lambda s: (lambda r, n: np.round(r.gamma(2.0, s, n) + s, 4)))(scale)
            specs.append(_Spec(f"num_{j:03d}", "numeric", drawn, drift if moves else None))
    return Synth(specs, seed)


def test_report_of_the_last_window_lists_every_feature_and_the_drifted_first(car):
    tmp, path, windows = car
    out = tmp / "last.html"
    proc = driftmon("report", "--config", path, "--windows", str(tmp / "windows.jsonl"), "--out", str(out))
    last = windows[-1]
    assert f"{len(last['drifted'])} of 8 features drifted" in proc.stderr
    page = out.read_text()
    assert set(last["drifted"]) >= {"car_value", "salary_range", "debt_to_income_ratio"}
    rows = re.findall(r'<tr class="(drifted|)" data-feature="([^"]+)"', page)
    assert sorted(name for _cls, name in rows) == sorted(last["features"])
    # drifted first, and marked
    assert [name for cls, name in rows[:len(last["drifted"])]] == [name for cls, name in rows if cls]
    assert {name for cls, name in rows if cls} == set(last["drifted"])
    # nothing is fetched from anywhere: no external URL in any attribute, and a CSP that forbids it
    assert not re.search(r'(src|href)\s*=\s*"(https?:)?//', page)
    assert "default-src 'none'" in page
    # the retraining verdict of the daemon's own policy: 3 drifted windows in a row with 3 of 8 features
    assert "Retraining recommended" in page


def test_report_of_an_older_window_and_of_a_data_file(car):
    tmp, path, windows = car
    out = tmp / "first.html"
    driftmon("report", "--config", path, "--windows", str(tmp / "windows.jsonl"), "--index", "0", "--out", str(out))
    page = out.read_text()
    assert windows[0]["drifted"] == [] and "0 of 8" in page and "Retraining not recommended" in page
    bad = driftmon("report", "--config", path, "--windows", str(tmp / "windows.jsonl"), "--index", "99",
                   "--out", str(tmp / "x.html"), check=False)
    assert bad.returncode == 2 and bad.stderr.startswith("report error: window 99 is not in")
    assert "Traceback" not in bad.stderr

    # windows of another baseline are on other bins: refused, not drawn wrong
    other = tmp / "other"
    other.mkdir()
    other_path, _ = write_setup(other, car_loan(seed=6), window={"size": 4000})
    bad = driftmon("report", "--config", other_path, "--windows", str(tmp / "windows.jsonl"), "--out",
                   str(tmp / "x.html"), check=False)
    assert bad.returncode == 2 and "was evaluated against baseline sha256:" in bad.stderr, bad.stderr

    # --current: a file compared with the baseline, as `driftmon compare` does
    pq.write_table(car_loan(seed=9).training_table(3000), tmp / "today.parquet")
    driftmon("report", "--config", path, "--current", str(tmp / "today.parquet"), "--out", str(tmp / "file.html"))
    page = (tmp / "file.html").read_text()
    assert "from today.parquet" in page and "0 of 8" in page


@needs_chromium
def test_report_renders_in_chromium_without_errors(car):
    tmp, path, windows = car
    out = tmp / "browser.html"
    driftmon("report", "--config", path, "--windows", str(tmp / "windows.jsonl"), "--out", str(out))
    last = windows[-1]
    with Chromium() as browser:
        browser.open(out.as_uri())
        dom = browser.evaluate("""(() => {
            const rows = [...document.querySelectorAll('#features tbody tr')];
            const cards = [...document.querySelectorAll('details.feature')];
            return {
              rows: rows.map(r => [r.dataset.feature, r.classList.contains('drifted'), !r.hidden]),
              cards: cards.map(c => [c.dataset.feature, c.classList.contains('drifted'), !c.hidden, c.open]),
              charts: cards.filter(c => !c.hidden && c.open).map(c => {
                const s = c.querySelector('svg.chart').getBoundingClientRect();
                return [c.dataset.feature, s.width, s.height, c.querySelectorAll('svg.chart rect').length];
              }),
              outputs: [...document.querySelectorAll('.panel svg.chart')].map(s => s.getBoundingClientRect().height),
              verdict: document.getElementById('verdict').innerText,
            };
        })()""")
        assert sorted(r[0] for r in dom["rows"]) == sorted(last["features"])
        assert {r[0] for r in dom["rows"] if r[1]} == set(last["drifted"])
        assert all(r[2] for r in dom["rows"])
        assert [c[0] for c in dom["cards"] if c[1]] == [c[0] for c in dom["cards"][:len(last["drifted"])]]
        # every drifted feature's chart is open and drawn, with bars, at a real size
        drawn = {name: (w, h, bars) for name, w, h, bars in dom["charts"]}
        for name in last["drifted"]:
            w, h, bars = drawn[name]
            assert w > 100 and h > 50 and bars >= 4, (name, drawn[name])
        assert len(dom["outputs"]) == 2 and min(dom["outputs"]) > 50  # prediction and score
        assert "Retraining recommended" in dom["verdict"]

        # the table sorts and filters in the page
        browser.evaluate("document.querySelector('#features th:nth-child(1)').click()")
        names = browser.evaluate("[...document.querySelectorAll('#features tbody tr')].map(r => r.dataset.feature)")
        assert names in (sorted(names), sorted(names, reverse=True))
        browser.evaluate("const f = document.getElementById('filter'); f.value = 'car_';"
                         "f.dispatchEvent(new Event('input'))")
        visible = browser.evaluate("[...document.querySelectorAll('#features tbody tr')]"
                                   ".filter(r => !r.hidden).map(r => r.dataset.feature)")
        assert visible == ["car_value"]
        shot = browser.screenshot(str(tmp / "report.png"), height=2000)
        assert shot[:8] == b"\x89PNG\r\n\x1a\n" and len(shot) > 20_000
        if SHOTS:
            os.makedirs(SHOTS, exist_ok=True)
            browser.screenshot(os.path.join(SHOTS, "report-car-loan.png"), height=2400)
        assert browser.errors == []
        assert browser.requests == [out.as_uri()]


@needs_chromium
def test_report_of_200_features_is_small_paged_and_drawn(tmp_path):
    synth = wide_synth(200, drifting=12, seed=2)
    path, config = write_setup(tmp_path, synth, train_rows=20_000, window={"size": 5000})
    write_jsonl(tmp_path / "logs.jsonl", synth.messages(5000, drift_at=0))
    driftmon("replay", "--config", path, "--input", str(tmp_path / "logs.jsonl"), "--out",
             str(tmp_path / "windows.jsonl"))
    result = read_jsonl(tmp_path / "windows.jsonl")[-1]
    assert len(result["features"]) == 200 and len(result["drifted"]) >= 10
    out = tmp_path / "wide.html"
    driftmon("report", "--config", path, "--windows", str(tmp_path / "windows.jsonl"), "--out", str(out))
    size = out.stat().st_size
    assert size < 3_000_000, size
    with Chromium() as browser:
        browser.open(out.as_uri())
        pages = browser.evaluate("document.getElementById('page-info').textContent")
        assert pages == "page 1 of 10 (200 features)"
        seen, drifted_cards = [], []
        for page in range(10):
            shown = browser.evaluate("""[...document.querySelectorAll('details.feature')].filter(c => !c.hidden)
                .map(c => { c.open = true; const s = c.querySelector('svg.chart').getBoundingClientRect();
                            return [c.dataset.feature, c.classList.contains('drifted'), s.width, s.height]; })""")
            assert len(shown) == 20
            assert all(w > 100 and h > 20 for _n, _d, w, h in shown), shown
            seen += [n for n, _d, _w, _h in shown]
            drifted_cards += [n for n, d, _w, _h in shown if d]
            browser.evaluate("document.getElementById('next').click()")
        assert sorted(seen) == sorted(result["features"])
        assert drifted_cards == seen[:len(result["drifted"])]
        assert set(drifted_cards) == set(result["drifted"])
        # "drifted only" leaves just them, in the table and the cards
        browser.evaluate("const o = document.getElementById('only-drifted'); o.checked = true;"
                         "o.dispatchEvent(new Event('change'))")
        rows = browser.evaluate("[...document.querySelectorAll('#features tbody tr')].filter(r => !r.hidden).length")
        assert rows == len(result["drifted"])
        if SHOTS:
            browser.screenshot(os.path.join(SHOTS, "report-200-features.png"), height=1600)
        assert browser.errors == []
        assert browser.requests == [out.as_uri()]


def test_load_windows_picks_the_index_and_its_history(tmp_path):
    lines = [{"window": {"index": i}, "drifted": [], "features": {}} for i in range(7)]
    (tmp_path / "w.jsonl.1").write_text("".join(json.dumps(x) + "\n" for x in lines[:3]))
    (tmp_path / "w.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines[3:]) + '{"window": {"ind')
    paths = [str(tmp_path / "w.jsonl.1"), str(tmp_path / "w.jsonl")]
    result, history = load_windows(paths)
    assert result["window"]["index"] == 6 and [h["window"]["index"] for h in history] == list(range(7))
    result, history = load_windows(paths, index=4, keep=3)
    assert result["window"]["index"] == 4 and [h["window"]["index"] for h in history] == [2, 3, 4]
    with pytest.raises(ValueError, match="window 9 is not in"):
        load_windows(paths, index=9)


@needs_chromium
def test_daemon_serves_the_report_of_its_latest_and_older_windows(tmp_path, tansu_broker):
    import urllib.request

    from monitor.tansu import free_port
    from tests.daemon_proc import DaemonProcess
    from tests.test_daemon_integration import produce

    topic = "predictions-report"
    tansu_broker.create_topic(topic, partitions=1)
    kafka = {"bootstrap_servers": tansu_broker.bootstrap, "topic": topic, "group_id": "driftmon-report",
             "lag_interval": "1s", "commit_interval": "200ms"}
    path, _config = write_setup(tmp_path, car_loan(seed=1), window={"size": 1000}, kafka=kafka,
                                state={"dir": "state", "checkpoint_interval": "1s"})
    daemon = DaemonProcess(path, free_port(), str(tmp_path / "daemon.log"))
    try:
        daemon.start()
        assert daemon.get("/report").startswith(b"no window has closed yet")
        produce(tansu_broker.bootstrap, topic, car_loan(seed=21).messages(5000, drift_at=2000))
        status = daemon.wait_windows(5, timeout=120)
        assert status["report"] == "/report"
        last = status["last_window"]
        url = f"http://127.0.0.1:{daemon.port}"
        with urllib.request.urlopen(url + "/report", timeout=30) as r:
            assert r.headers["Content-Type"].startswith("text/html")
        with Chromium() as browser:
            for query, index in (("", last["window"]["index"]), ("?index=0", 0)):
                browser.open(url + "/report" + query)
                title = browser.evaluate("document.title")
                drifted = browser.evaluate("[...document.querySelectorAll('#features tbody tr.drifted')]"
                                           ".map(r => r.dataset.feature).sort()")
                assert title.endswith(f"window {index}"), title
                if index == 0:
                    assert drifted == []
                else:
                    assert drifted == sorted(last["drifted"]) and "car_value" in drifted
                heights = browser.evaluate("[...document.querySelectorAll('details.feature[open] svg.chart')]"
                                           ".map(s => s.getBoundingClientRect().height)")
                assert heights and min(heights) > 20
            assert browser.errors == []
            assert set(browser.requests) == {url + "/report", url + "/report?index=0"}
        assert daemon.get("/report?index=999").startswith(b"window 999 is not in")
        assert daemon.get("/report?index=x").startswith(b"index must be a window number")
    finally:
        daemon.close()


@needs_chromium
def test_report_shows_performance_fairness_and_segments_of_a_labelled_stream(tmp_path):
    import pyarrow as pa
    import yaml

    from monitor.baseline import build_baseline
    from monitor.config import load_config
    from tests.labelled import config as labelled_config, labelled, messages

    pq.write_table(pa.table(labelled(20_000, seed=1)), tmp_path / "train.parquet")
    tree = labelled_config(window={"size": 4000}, labels={"window": 4000, "positive": "1"},
                           fairness={"attributes": [{"name": "group"}], "favourable": "1", "min_group_size": 100})
    (tmp_path / "driftmon.yaml").write_text(yaml.safe_dump(tree))
    config = load_config(str(tmp_path / "driftmon.yaml"))
    build_baseline(config, str(tmp_path / "train.parquet")).save(config.baseline)
    # the model refuses everyone in group B: a parity alert and a recall drop
    write_jsonl(tmp_path / "logs.jsonl", messages(labelled(8000, seed=3, degrade_group_b=True)))
    driftmon("replay", "--config", str(tmp_path / "driftmon.yaml"), "--input", str(tmp_path / "logs.jsonl"),
             "--out", str(tmp_path / "replay.jsonl"))
    records = read_jsonl(tmp_path / "replay.jsonl")
    perf = [r for r in records if r.get("kind") == "performance"][-1]
    assert perf["fairness"]["group"]["alert"] is True
    out = tmp_path / "labelled.html"
    driftmon("report", "--config", str(tmp_path / "driftmon.yaml"), "--windows", str(tmp_path / "replay.jsonl"),
             "--out", str(out))
    with Chromium() as browser:
        browser.open(out.as_uri())
        dom = browser.evaluate("""(() => ({
            headings: [...document.querySelectorAll('h2')].map(h => h.innerText.trim()),
            perf: [...document.querySelectorAll('table.perf tbody tr')].map(r => r.cells[0].innerText),
            drops: [...document.querySelectorAll('table.perf tbody tr')]
                   .filter(r => r.innerText.includes('drop')).map(r => r.cells[0].innerText),
            groups: [...document.querySelectorAll('table.fairness tbody tr')].map(r => r.cells[0].innerText),
            outputs: [...document.querySelectorAll('.panel h3')].map(h => h.innerText),
            segments: [...document.querySelectorAll('h2')].some(h => h.innerText === 'Segments'),
        }))()""")
        assert "Fairness: group alert" in dom["headings"]
        assert {"accuracy", "recall"} <= set(dom["perf"])
        assert set(dom["drops"]) == {m for m, t in perf["drops"].items() if t["drop"]} and dom["drops"]
        assert sorted(dom["groups"]) == sorted(perf["fairness"]["group"]["groups"])
        assert [o.split(":")[0] for o in dom["outputs"]] == ["Prediction", "Score", "Label"]
        assert dom["segments"]
        assert browser.errors == []
