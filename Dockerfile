# Slipway operator image.
#
#   docker build -t ghcr.io/slipway-dev/slipway-operator:0.1.0 .
#
# Base image: an exact Python patch release on Debian bookworm, slim variant. Tags can move (a
# rebuilt base gets the same tag), so the release pipeline should pin the digest as well, i.e.
# python:3.11.14-slim-bookworm@sha256:<digest>; it cannot be resolved offline where this file was
# written. Keep both stages on the same base: the venv's interpreter is a symlink to
# /usr/local/bin/python3.11 of that image.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# ---- builder: install slipway and its dependencies into a self-contained venv --------------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
# Only what the package build needs (README.md is the project's readme in pyproject.toml).
COPY pyproject.toml README.md ./
COPY operator/ operator/

# A non-editable install: the venv holds slipway itself, not a link back to /src.
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir /src

# ---- final: the venv on a clean base, no build context, no compilers, not root -----------------
FROM ${PYTHON_IMAGE}

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

COPY --from=builder /opt/venv /opt/venv

# A numeric UID/GID (no passwd entry needed), so Kubernetes can check runAsNonRoot. The
# manifests run the root filesystem read-only and mount an emptyDir at /tmp.
USER 65532:65532
WORKDIR /tmp

# 8080: kopf liveness endpoint (/healthz); 9090: metrics.
EXPOSE 8080 9090

ENTRYPOINT ["slipway"]
CMD ["run", "--liveness=http://0.0.0.0:8080/healthz", "--metrics-port=9090"]
