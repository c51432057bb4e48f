# syntax=docker/dockerfile:1.7
# The GPU worker image: `tts-pipeline worker` on the CUDA runtime that matches the torch pin
# (torch 2.11.0 cu130 wheels from PyPI). Model bundles are not baked in: the worker syncs them from
# the S3 model cache into TTS_CACHE_DIR (mount a volume there so restarts start warm; the
# torch.compile cache lives there too).
#
# Two stages. `builder` turns the exact install set (docker/requirements.txt, generated and checked
# by scripts/image_lock.py in `make test`) into wheels, compiling the sdists listed in
# docker/build-from-source.txt (ctc-forced-aligner's C++ extension) with the compiler and headers
# only it has. The runtime stage installs those wheels with --no-index: no compiler, no network.
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu22.04

FROM ${CUDA_IMAGE} AS python
ARG DEBIAN_FRONTEND=noninteractive
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
# Python 3.11 (the project's pin) from deadsnakes; libsndfile comes with the soundfile wheel.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl gnupg software-properties-common \
 && add-apt-repository -y ppa:deadsnakes/ppa \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
 && apt-get purge -y software-properties-common gnupg && apt-get autoremove -y \
 && rm -rf /var/lib/apt/lists/* \
 && python3.11 -m venv /opt/venv

FROM python AS builder
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential python3.11-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /build
COPY docker/requirements.txt docker/build-from-source.txt ./docker/
# Every locked distribution as a wheel: downloaded where PyPI has one, built here where it has not.
RUN pip wheel --no-deps --wheel-dir /wheels -r docker/requirements.txt
COPY pyproject.toml README.md ./
COPY pipeline ./pipeline
RUN pip wheel --no-deps --wheel-dir /wheels .

FROM python AS runtime
ENV TTS_CACHE_DIR=/var/cache/tts-pipeline \
    TTS_METRICS_PORT=9100 \
    TTS_LOG_FORMAT=json \
    HF_HUB_OFFLINE=1 \
    HOME=/home/tts \
    XDG_CACHE_HOME=/tmp/.cache \
    MPLCONFIGDIR=/tmp/matplotlib \
    NUMBA_CACHE_DIR=/tmp/numba
WORKDIR /app
COPY docker/requirements.txt ./docker/
# The second install is this project's own wheel, built above from the same source tree.
# hadolint ignore=DL3013
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-index --only-binary=:all: --find-links /wheels -r docker/requirements.txt \
 && pip install --no-index --only-binary=:all: --no-deps --find-links /wheels tts-pipeline \
 && useradd --system --uid 10001 --home-dir /home/tts --create-home tts \
 && mkdir -p /var/cache/tts-pipeline \
 && chown tts /var/cache/tts-pipeline

USER 10001
VOLUME ["/var/cache/tts-pipeline"]
EXPOSE 9100

# Liveness of the event loop (the worker also serves /readyz and /metrics on this port).
HEALTHCHECK --interval=30s --timeout=5s --start-period=600s --retries=3 \
  CMD ["sh", "-c", "curl -fsS http://127.0.0.1:${TTS_METRICS_PORT}/healthz || exit 1"]

STOPSIGNAL SIGTERM
ENTRYPOINT ["tts-pipeline"]
CMD ["worker"]
