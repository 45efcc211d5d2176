# The one image of the Eco² mesh: every workload of helm/eco2 runs `eco2 serve NAME` from it and
# the migrations hook Job `eco2 migrate`.
#
#   podman build -t registry.example.com/eco2/eco2-mesh:0.1.0 .      (or docker build)
#
# Two stages: the build stage installs the project and its dependencies (binary wheels) into a
# virtualenv; the final stage is the same slim Python with only that virtualenv copied in: no pip
# cache, no build tools, no sources. It runs as uid 10001 (the chart's runAsUser) and needs no
# writable path but /tmp (the chart mounts an emptyDir there; the root filesystem is read-only).
# The base, repository and tag apart: every FROM names an explicit tag (never an implied latest).
ARG PYTHON_IMAGE=docker.io/library/python
ARG PYTHON_TAG=3.11-slim-bookworm

FROM ${PYTHON_IMAGE}:${PYTHON_TAG} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/eco2
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY proto ./proto
COPY services ./services
COPY gateway ./gateway
COPY mesh ./mesh
# The project with the dependency versions pyproject.toml pins; byte-compiled here, so the
# read-only runtime never writes .pyc files.
RUN /opt/eco2/bin/pip install --no-cache-dir --prefer-binary . \
    && /opt/eco2/bin/python -m compileall -q /opt/eco2/lib

FROM ${PYTHON_IMAGE}:${PYTHON_TAG}
RUN groupadd --system --gid 10001 eco2 \
    && useradd --system --uid 10001 --gid eco2 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin eco2
COPY --from=build /opt/eco2 /opt/eco2
ENV PATH=/opt/eco2/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    LC_ALL=C.UTF-8 \
    ECO2_GRPC_HOST=0.0.0.0 \
    ECO2_METRICS_HOST=0.0.0.0 \
    ECO2_HTTP_HOST=0.0.0.0
USER 10001:10001
# gRPC (every service but the gateway), the gateway's HTTP, Prometheus /metrics
EXPOSE 50051 8080 9464
# Kubernetes probes gRPC health (grpc.health.v1) and the gateway's /healthz itself.
HEALTHCHECK NONE
ENTRYPOINT ["eco2"]
CMD ["--help"]
