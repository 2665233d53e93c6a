"""The container image: built from the Dockerfile with buildah on a Debian base, then run.

scripts/build-image.sh makes the base from Debian packages (mmdebstrap; no registry is needed)
and builds the Dockerfile on it. The image must then do what the chart asks of it: run as the
chart's non-root user, accept the chart's config and baseline, and process predictions.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from monitor.baseline import build_baseline
from monitor.config import load_config
from monitor.synth import car_loan
from tests.helpers import write_jsonl

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "deploy" / "helm" / "driftmon"
SCRIPT = REPO / "scripts" / "build-image.sh"
TAG = "localhost/driftmon:ci"
#: The image holds Python, numpy, scipy, pyarrow and river; a compiler or the test extras would show.
MAX_BYTES = 700e6


def buildah(*args, check=True, timeout=600) -> subprocess.CompletedProcess:
    proc = subprocess.run(["bash", str(SCRIPT), "buildah", *args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        pytest.fail(f"buildah {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}", pytrace=False)
    return proc


@pytest.fixture(scope="module")
def image():
    missing = [tool for tool in ("mmdebstrap", "buildah") if shutil.which(tool) is None]
    if missing:
        message = f"{', '.join(missing)} not installed (scripts/setup.sh installs them)"
        if not os.environ.get("CI") and os.environ.get("DRIFTMON_ALLOW_SKIP") == "1":
            pytest.skip(message)
        pytest.fail(message, pytrace=False)
    proc = subprocess.run(["bash", str(SCRIPT), "build", TAG], capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-5000:]
    sys.stderr.write(proc.stderr)  # the build's timings and the image size, in the test log
    return TAG


@pytest.fixture(scope="module")
def chart_config(tmp_path_factory):
    """driftmon.yaml as the chart renders it (ci/deployment-minimal-values.yaml), and a baseline for it."""
    helm = Path(os.environ.get("DRIFTMON_CACHE") or Path.home() / ".cache" / "driftmon") / "bin" / "helm"
    tmp = tmp_path_factory.mktemp("image")
    proc = subprocess.run([str(helm), "template", "car-loan", str(CHART), "-f",
                           str(CHART / "ci" / "deployment-minimal-values.yaml")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    config_map = next(d for d in yaml.safe_load_all(proc.stdout)
                      if d and d["kind"] == "ConfigMap" and "driftmon.yaml" in d.get("data", {}))
    text = config_map["data"]["driftmon.yaml"]
    tree = yaml.safe_load(text)
    (tmp / "etc").mkdir()
    (tmp / "etc" / "driftmon.yaml").write_text(text)
    # The same config on the host, with the baseline where the host can write it.
    (tmp / "baseline").mkdir()
    host_tree = dict(tree, baseline=str(tmp / "baseline" / os.path.basename(tree["baseline"])))
    (tmp / "host.yaml").write_text(yaml.safe_dump(host_tree))
    config = load_config(str(tmp / "host.yaml"))
    import pyarrow.parquet as pq

    pq.write_table(car_loan(seed=3).training_table(20_000), tmp / "train.parquet")
    baseline = build_baseline(config, str(tmp / "train.parquet"))
    baseline.save(config.baseline)
    (tmp / "data").mkdir()
    write_jsonl(tmp / "data" / "logs.jsonl", car_loan(seed=8).messages(7000, drift_at=3000))
    return tmp, tree, baseline


def test_image_runs_as_the_charts_user_and_checks_and_replays_the_charts_config(image, chart_config):
    tmp, tree, baseline = chart_config
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    uid = values["securityContext"]["runAsUser"]
    info = json.loads(buildah("inspect", "--type", "image", image).stdout)
    config = info["OCIv1"]["config"]
    assert config["User"] == f"{uid}:{values['securityContext']['runAsGroup']}"
    assert config["Entrypoint"] == ["driftmon"]
    assert not any(e.startswith("PIP_CERT=") for e in config.get("Env", [])), "the CA bundle is build-time only"
    listed = buildah("images", "--format", "{{.Size}}", image).stdout.strip()
    sys.stderr.write(f"image {image}: {listed}\n")
    number, unit = re.match(r"([\d.]+)\s*([kMG]?B)", listed).groups()
    assert float(number) * {"B": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9}[unit] < MAX_BYTES, listed

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    container = buildah("from", "--quiet", image).stdout.strip()
    try:
        out = tmp / "out"
        out.mkdir(exist_ok=True)
        out.chmod(0o777)  # the image's user writes there
        mounts = ["-v", f"{tmp / 'etc'}:/etc/driftmon:ro", "-v", f"{tmp / 'baseline'}:/etc/driftmon-baseline:ro",
                  "-v", f"{tmp / 'data'}:/data:ro", "-v", f"{out}:/out"]
        calls = iter(range(100))

        def run(*command) -> str:
            # `buildah run` (chroot isolation) now and then loses a short-lived process's stdout:
            # the command writes its output to a mounted folder instead.
            n = next(calls)
            script = " ".join(shlex.quote(c) for c in command) + f" >/out/{n}.out 2>/out/{n}.err"
            proc = buildah("run", *mounts, container, "--", "sh", "-c", script, check=False, timeout=300)
            err = (out / f"{n}.err").read_text() if (out / f"{n}.err").exists() else ""
            assert proc.returncode == 0, f"{' '.join(command)} exited {proc.returncode}: {err}{proc.stderr}"
            return (out / f"{n}.out").read_text()

        assert run("driftmon", "--version").strip() == f"driftmon {project['version']}"
        assert run("id", "-u").strip() == str(uid)
        # the image holds this tree's package: its modules and its declared requirements
        package = run("python3", "-c", "import importlib.metadata as m, json, os, monitor; "
                                      "print(json.dumps(sorted(os.listdir(os.path.dirname(monitor.__file__))))); "
                                      "print(json.dumps(m.requires('driftmon')))").splitlines()
        modules = sorted(p.name for p in (REPO / "monitor").iterdir() if p.suffix == ".py")
        assert [n for n in json.loads(package[0]) if n.endswith(".py")] == modules
        assert {re.split(r"[<>=;\[ ]", r)[0] for r in json.loads(package[1]) if "extra ==" not in r} \
            == {re.split(r"[<>=;\[ ]", r)[0] for r in project["dependencies"]}
        assert run("sh", "-c", "test ! -e /run/secrets/pip_cert && ! command -v gcc && ! command -v pytest "
                               "&& echo clean").strip() == "clean"
        checked = run("driftmon", "check-config", "--config", "/etc/driftmon/driftmon.yaml").strip()
        assert checked == f"config ok: model {tree['model']}, {len(tree['schema']['features'])} features, " \
                          f"baseline {baseline.fingerprint}"
        # the state directory is the image's, writable by the chart's user
        assert run("sh", "-c", "touch /var/lib/driftmon/probe && echo writable").strip() == "writable"
        replayed = run("driftmon", "replay", "--config", "/etc/driftmon/driftmon.yaml", "--input",
                       "/data/logs.jsonl", "--out", "-")
    finally:
        buildah("rm", container, check=False)
    image_windows = [json.loads(line) for line in replayed.splitlines() if line.strip()]
    host = subprocess.run([sys.executable, "-m", "monitor.cli", "replay", "--config", str(tmp / "host.yaml"),
                           "--input", str(tmp / "data" / "logs.jsonl"), "--out", "-"],
                          capture_output=True, text=True, timeout=300)
    assert host.returncode == 0, host.stderr
    host_windows = [json.loads(line) for line in host.stdout.splitlines() if line.strip()]
    drift = [w for w in image_windows if w.get("kind", "drift") == "drift"]
    assert [w["window"]["events"] for w in drift] == [tree["window"]["size"], 7000 - tree["window"]["size"]]
    assert "car_value" in drift[-1]["drifted"]
    assert [(w["window"], w["drifted"]) for w in image_windows] == [(w["window"], w["drifted"]) for w in host_windows]
