# The cluster image: Ray 2.60.0 (GPU base), torch and TensorFlow built for CUDA, and this
# project. One image for the head, the CPU workers and the GPU workers (KubeRay or `ray start`).
#
#   docker build -t serve-app:0.1.0 .
#
# Needs an NVIDIA driver 580 or newer on GPU nodes: PyPI's torch 2.13.0 wheel for Linux is
# built for CUDA 13.0; TensorFlow 2.21 brings its own CUDA 12 libraries (pip wheels), which
# the same driver runs. Not built by this repository's tests (no Docker engine there).
ARG RAY_IMAGE=rayproject/ray:2.60.0-py311-gpu
FROM ${RAY_IMAGE}

# The image's user is `ray`; its Python (3.11, same as the base image's Ray) is on PATH.
WORKDIR /home/ray/serve-app
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    RAY_USAGE_STATS_ENABLED=0

# torch first and pinned, like the Makefile: unpinned, the project's `torch>=2.4` could pick
# another build. Override for another CUDA, e.g. --build-arg TORCH="torch==2.13.0 --index-url ...".
ARG TORCH="torch==2.13.0"
RUN pip install ${TORCH}

# Dependencies in their own layer: a code change does not reinstall them.
COPY --chown=ray:users pyproject.toml README.md ./
RUN mkdir serve_app deployments \
    && touch serve_app/__init__.py deployments/__init__.py \
    && pip install ".[gpu]" \
    && pip uninstall --yes serve-app \
    && rm -rf serve_app deployments build *.egg-info

COPY --chown=ray:users serve_app ./serve_app
COPY --chown=ray:users deployments ./deployments
COPY --chown=ray:users serve_config.yaml ./
RUN pip install --no-deps . \
    && python -c "import serve_app.app, deployments.tensorflow, deployments.transformers"
