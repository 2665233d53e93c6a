# syntax=docker/dockerfile:1
# The driftmon image (the Helm chart's default image, ghcr.io/driftmon/driftmon):
#   docker build -t ghcr.io/driftmon/driftmon:0.1.0 .
# The tag is the version in pyproject.toml, which is also the chart's appVersion.
# BASE_IMAGE: any image with python3 (3.10+) and pip, and groupadd/useradd; CI builds one from Debian
# packages (scripts/build-image.sh). Behind a TLS-inspecting proxy, give pip its CA bundle as a build
# secret, used by the download step only and never stored in the image:
#   docker build --secret id=pip_cert,src="$PIP_CERT" -t ghcr.io/driftmon/driftmon:0.1.0 .
ARG BASE_IMAGE=python:3.11-slim

# ---- builder: the driftmon wheel, and wheels of its runtime dependencies ----
FROM ${BASE_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
# .dockerignore lets in only pyproject.toml, README.md, LICENSE and the packages.
COPY . .
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=secret,id=pip_cert,target=/run/secrets/pip_cert \
    if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi \
    && python3 -m pip wheel --wheel-dir /wheels .

# ---- runtime: only the wheel and what it depends on (no build tools, no test or bench extras) ----
FROM ${BASE_IMAGE} AS runtime
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
# A fixed non-root UID/GID: the chart's securityContext (runAsUser/runAsGroup/fsGroup) uses the same.
RUN groupadd --system --gid 10001 driftmon \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin driftmon \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/driftmon
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    python3 -m pip install --no-cache-dir --no-compile --no-index --find-links=/wheels /wheels/driftmon-*.whl
WORKDIR /var/lib/driftmon
USER 10001:10001
# /metrics, /healthz, /readyz, /status, /report
EXPOSE 9108
ENTRYPOINT ["driftmon"]
CMD ["run", "--config", "/etc/driftmon/driftmon.yaml"]
