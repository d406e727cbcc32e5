# syntax=docker/dockerfile:1
# One image for every Shepherd process: the KFP components, the KServe predictor
# (`python -m serving.predictor`), the rollout controller (`shepherd rollout controller`), the drift
# service (`python -m monitoring.drift`), the alert webhook (`python -m monitoring.webhook`) and, when the
# chart runs one, `mlflow server`. Its reference is components/platform.py's PLATFORM_IMAGE and the chart's
# image.repository:image.tag (a test keeps the two equal).
#
#   docker build -t ghcr.io/shepherd-mlops/shepherd:0.1.0 .
#
# Every Python package is pinned by constraints.txt; the base image by tag (bump both deliberately).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- builder: a venv at /opt/shepherd holding the project and its pinned dependencies -------------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
RUN python -m venv /opt/shepherd \
    && /opt/shepherd/bin/pip install --no-cache-dir pip==26.3 setuptools==84.2.1

# Dependencies first, from pyproject's list and pinned by constraints.txt, so that a code-only change
# rebuilds just the last layer.
COPY pyproject.toml constraints.txt ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > requirements.txt \
    && /opt/shepherd/bin/pip install --no-cache-dir -c constraints.txt -r requirements.txt

COPY README.md ./
COPY components ./components
COPY pipelines ./pipelines
COPY serving ./serving
COPY monitoring ./monitoring
# The project itself (not editable); no build isolation, so the pinned setuptools above builds it.
RUN /opt/shepherd/bin/pip install --no-cache-dir --no-build-isolation --no-deps -c constraints.txt .

# ---- runtime: the venv, a non-root user, nothing else ---------------------------------------------
FROM ${PYTHON_IMAGE}

ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="shepherd" \
      org.opencontainers.image.description="Kubernetes-native MLOps: KFP pipelines, MLflow registry, KServe canaries with automatic rollback" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="https://github.com/shepherd-mlops/shepherd" \
      org.opencontainers.image.url="https://github.com/shepherd-mlops/shepherd" \
      org.opencontainers.image.base.name="docker.io/library/python:3.11-slim-bookworm"

# A fixed numeric uid/gid (10001) so Kubernetes' runAsNonRoot can verify it and the chart's
# securityContext (runAsUser 10001) matches the image.
RUN groupadd --system --gid 10001 shepherd \
    && useradd --system --uid 10001 --gid 10001 --home-dir /home/shepherd --create-home --shell /usr/sbin/nologin shepherd

# XGBoost and LightGBM load the OpenMP runtime (libgomp1), which the slim image lacks (scripts/image.sh's
# Debian base has it already).
RUN python -c "import ctypes.util, sys; sys.exit(ctypes.util.find_library('gomp') is None)" \
    || (apt-get update && apt-get install -y --no-install-recommends libgomp1=12.2.0-14+deb12u1 \
        && rm -rf /var/lib/apt/lists/*)

COPY --from=builder /opt/shepherd /opt/shepherd
COPY specs /opt/shepherd/share/shepherd/specs

# The root filesystem is read-only in the chart; /tmp is an emptyDir, so anything a library caches or
# the embedded default writes goes there. Bytecode was compiled at install time.
ENV PATH=/opt/shepherd/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SHEPHERD_HOME=/tmp/shepherd \
    XDG_CACHE_HOME=/tmp/.cache \
    MPLCONFIGDIR=/tmp/matplotlib \
    GX_ANALYTICS_ENABLED=false

USER 10001:10001
WORKDIR /home/shepherd
# No ENTRYPOINT: every workload sets its own command (a KFP component, the predictor, the services).
CMD ["shepherd", "--help"]
