"""bench.run's report: figures kept from earlier runs say which host and commit measured them."""

import json

from bench.run import REPO, markdown, measured_on


def test_kept_figures_name_the_run_that_measured_them():
    doc = json.loads((REPO / "bench" / "results.json").read_text(encoding="utf-8"))
    doc["started_at"] = "a later partial run"
    doc["machine"] = dict(doc["machine"], cpu_model="Some Other CPU", git={"commit": "f" * 40})
    text = markdown(doc)
    kept = next(line for line in text.splitlines() if line.startswith("Kept from earlier runs"))
    for name, entry in doc["results"].items():
        if entry.get("run_at") and "measured_on" in entry and name not in ("soak", "restore"):
            assert f"{entry['run_at']}; {entry['measured_on']}" in kept, name
    assert "Some Other CPU" not in kept  # the current machine is not credited with the kept figures
    assert measured_on(doc["machine"]) == "Some Other CPU, 2 cores, commit ffffffff"
