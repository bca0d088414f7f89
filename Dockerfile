# syntax=docker/dockerfile:1
# CPU image: serves the bundled default model on CPU. The CUDA image is docker/Dockerfile.cuda.
#   docker build -t mamtra:0.1.0 .
#   docker run --rm -p 8000:8000 -e MAMTRA_API_KEY=change-me mamtra:0.1.0
#
# PyTorch's CPU wheels (no CUDA libraries, about a tenth of the size) come from PyTorch's own index, TORCH_INDEX_URL;
# point it at a mirror if you have one. The version pins match pyproject.toml.
# Pin the base by digest in production: python:3.11.14-slim-bookworm@sha256:<digest>.

FROM python:3.11.14-slim-bookworm AS build
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
# torch first, in its own layer: it changes far less often than the service's code.
RUN python -m venv /opt/venv \
    && pip install --index-url "$TORCH_INDEX_URL" torch==2.11.0 torchaudio==2.11.0
WORKDIR /src
# .dockerignore lets in only the package sources, pyproject.toml, README.md and the bundled model/voices directory,
# which the package installs as data: the image needs no download at run time.
COPY . .
RUN pip install . \
    && python -c "import model, service.cli, service.metrics, service.settings"

FROM python:3.11.14-slim-bookworm
# Numeric uid/gid so Kubernetes' runAsNonRoot can check them; the chart runs as the same ids.
RUN groupadd --system --gid 10001 mamtra \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin mamtra
COPY --from=build /opt/venv /opt/venv
# The root filesystem may be read-only (the Helm chart makes it so): every cache goes to /tmp, an emptyDir there.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    XDG_CACHE_HOME=/tmp/.cache \
    TORCHINDUCTOR_CACHE_DIR=/tmp/.cache/torchinductor \
    HF_HUB_OFFLINE=1 \
    MAMTRA_HOST=0.0.0.0 \
    MAMTRA_PORT=8000 \
    MAMTRA_DEVICE=cpu
USER 10001:10001
WORKDIR /tmp
EXPOSE 8000
# /readyz: 200 once warmed up; 503 while starting, draining or stalled. --start-period covers the warm-up.
HEALTHCHECK --interval=15s --timeout=5s --start-period=300s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('MAMTRA_PORT', '8000'), timeout=4)"]
# Exec form: the service is PID 1 and receives SIGTERM itself, which starts its drain (MAMTRA_DRAIN_TIMEOUT_S).
ENTRYPOINT ["mamtra"]
CMD ["serve"]
