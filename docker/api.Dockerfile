# Stillhouse CPU image: the API, `stillhouse migrate`, and the default CPU worker.
#
# Build from the repository root (docker-compose.yml does this):
#   docker build -f docker/api.Dockerfile -t stillhouse-api .
# The GPU worker has its own image (docker/worker.Dockerfile) on a CUDA base.

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The CPU build of torch first, from PyTorch's CPU index: PyPI's Linux wheels are CUDA
# builds that pull in several GB of nvidia-* libraries the API never uses. The later
# `pip install` sees these versions already satisfy pyproject's ranges and keeps them.
RUN pip install --index-url https://download.pytorch.org/whl/cpu \
        "torch>=2.6,<3" "torchvision>=0.21,<1"

WORKDIR /srv/stillhouse

# The remaining dependencies and the s3 extra (STILLHOUSE_ARTIFACT_URL=s3://...), read
# from pyproject.toml alone, so that editing the code does not reinstall them (this layer
# is rebuilt only when pyproject.toml changes).
COPY pyproject.toml ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies']['s3']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# The whole repository, installed editable: app/migrate.py finds the migrations at
# ../alembic relative to the package, so alembic/ must stay next to app/.
COPY . .
RUN pip install --no-deps -e .

# A fixed non-root uid, the same in the worker image: both write to the shared artifacts
# volume, and a fresh named volume takes the owner of the directory it is mounted over.
RUN useradd --system --uid 10001 --create-home --home-dir /home/stillhouse stillhouse \
    && mkdir -p /var/lib/stillhouse/artifacts /var/lib/stillhouse/data \
    && chown -R stillhouse:stillhouse /var/lib/stillhouse
USER stillhouse

ENV STILLHOUSE_ARTIFACT_DIR=/var/lib/stillhouse/artifacts \
    STILLHOUSE_DATA_ROOT=/var/lib/stillhouse/data

EXPOSE 8000

# Migrations are not run here: compose runs `stillhouse migrate` once, as its own
# service, before the API and every worker start (several API or worker replicas would
# otherwise race to migrate). No HEALTHCHECK either: this image also runs the CPU worker,
# which serves no HTTP; compose checks the API's /v2/health/ready instead.
CMD ["stillhouse", "api", "--host", "0.0.0.0", "--port", "8000"]
