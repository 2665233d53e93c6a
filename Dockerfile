# syntax=docker/dockerfile:1
# The driftmon image (the Helm chart's default image, ghcr.io/driftmon/driftmon):
#   docker build -t ghcr.io/driftmon/driftmon:0.1.0 .
# The tag is the version in pyproject.toml, which is also the chart's appVersion.

# ---- builder: the driftmon wheel, and wheels of its runtime dependencies ----
FROM python:3.11-slim AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
# .dockerignore lets in only pyproject.toml, README.md, LICENSE and the packages.
COPY . .
RUN --mount=type=cache,target=/root/.cache/pip \
    pip wheel --wheel-dir /wheels .

# ---- runtime: only the wheel and what it depends on (no build tools, no test or bench extras) ----
FROM python:3.11-slim AS runtime
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
    pip install --no-cache-dir --no-index --find-links=/wheels /wheels/driftmon-*.whl
WORKDIR /var/lib/driftmon
USER 10001:10001
# /metrics, /healthz, /readyz, /status
EXPOSE 9108
ENTRYPOINT ["driftmon"]
CMD ["run", "--config", "/etc/driftmon/driftmon.yaml"]
