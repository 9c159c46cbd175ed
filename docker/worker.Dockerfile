# Stillhouse GPU worker: `stillhouse worker` on a CUDA base.
#
# Build from the repository root (docker-compose.yml's `gpu` profile does this):
#   docker build -f docker/worker.Dockerfile -t stillhouse-worker-gpu .
# Run it with a GPU: docker run --gpus all ... (needs the NVIDIA Container Toolkit).
#
# Why this base: the torch CUDA wheels bring their own CUDA runtime, cuBLAS, cuDNN and
# NCCL as nvidia-* wheels, so the image needs only what the `base` flavour gives (the
# NVIDIA_* variables that make the container toolkit mount the host's driver, and the
# check that the driver supports this CUDA version); the `runtime`/`cudnn` flavours would
# add a second copy of the same libraries (several GB). Ubuntu 22.04 ships Python 3.10,
# so Python 3.11 comes from the deadsnakes PPA, the usual source of other Pythons there.
#
# CUDA_VERSION and TORCH_INDEX_URL go together: the base's CUDA version (13.0) is the one
# the torch build is made for (cu130), so the driver check matches what torch needs. A
# host whose driver is too old for CUDA 13 (below 580) takes an older pair, e.g.
#   --build-arg CUDA_VERSION=12.8.1 --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ARG CUDA_VERSION=13.0.0
FROM nvidia/cuda:${CUDA_VERSION}-base-ubuntu22.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# add-apt-repository keeps its recommends (launchpadlib, gpg) to fetch the PPA's key; it is
# removed again once the PPA is set up.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && apt-get install -y software-properties-common \
    && add-apt-repository -y ppa:deadsnakes/ppa \
    && apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
    && apt-get purge -y --auto-remove software-properties-common \
    && rm -rf /var/lib/apt/lists/*

# A virtualenv, so that pip never touches the system's Python packages.
RUN python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# torch for the base's CUDA version, from PyTorch's own index rather than PyPI: PyPI's
# Linux wheels are CUDA builds too, but their CUDA version moves with torch releases and
# would drift away from the base's.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu130
RUN pip install --upgrade pip \
    && pip install --index-url "${TORCH_INDEX_URL}" "torch>=2.6,<3" "torchvision>=0.21,<1"

WORKDIR /srv/stillhouse

# The remaining dependencies and the s3 and ray extras, from pyproject.toml alone (rebuilt
# only when it changes). With Ray in it, this image is also the image of a Ray cluster's
# nodes for STILLHOUSE_RAY_ADDRESS (docs/deploy.md, "Ray").
# torch and torchvision are already installed within pyproject's ranges and stay as they are.
COPY pyproject.toml ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies']['s3'] + p['optional-dependencies']['ray']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# The whole repository, installed editable, so that alembic/ stays next to app/.
COPY . .
RUN pip install --no-deps -e .

# The same uid as the API image: both write to the shared artifacts volume.
RUN useradd --system --uid 10001 --create-home --home-dir /home/stillhouse stillhouse \
    && mkdir -p /var/lib/stillhouse/artifacts /var/lib/stillhouse/data \
    && chown -R stillhouse:stillhouse /var/lib/stillhouse
USER stillhouse

ENV STILLHOUSE_ARTIFACT_DIR=/var/lib/stillhouse/artifacts \
    STILLHOUSE_DATA_ROOT=/var/lib/stillhouse/data

# auto takes the GPU when the container sees one and the CPU otherwise; compose's
# worker-gpu passes --device cuda instead, so a missing GPU fails loudly there.
CMD ["stillhouse", "worker", "--device", "auto"]
