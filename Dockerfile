# syntax=docker/dockerfile:1.7
# The medssl image: KFP components, the MLflow tracking server and the KubeRay head/workers all
# run it. Build: `make image` (or `docker build -t medssl:dev .`). Optional ImageNet weights:
#   docker build --build-arg WEIGHTS_URL=https://download.pytorch.org/models/resnet18-f37072fd.pth \
#                --build-arg WEIGHTS_SHA256=<sha256 of that file> -t medssl:dev .
# then `-S train.init=imagenet` finds them through TORCH_HOME (no download at run time).
#
# The CUDA runtime matches the locked torch build (torch 2.15.0 with cuda-toolkit 13.2 wheels in
# uv.lock); torch brings its own CUDA libraries, the base image brings the NVIDIA container
# settings (NVIDIA_VISIBLE_DEVICES, NVIDIA_REQUIRE_CUDA) that the GPU node's runtime checks.
FROM ghcr.io/astral-sh/uv:0.13.9 AS uv

FROM nvidia/cuda:13.2.0-runtime-ubuntu24.04

# Each ARG is declared just before its first use: a changed build arg invalidates the cache only
# from there on (REVISION changes on every CI build, so its label comes last).
ARG PYTHON_VERSION=3.11

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

COPY --from=uv /uv /uvx /usr/local/bin/

# uv-managed Python outside any home directory so the non-root user can run it; the project
# venv at /opt/medssl/.venv (contract with the KFP components); bytecode compiled at install.
ENV UV_PYTHON_INSTALL_DIR=/opt/uv/python \
    UV_PYTHON_PREFERENCE=only-managed \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_NO_PROGRESS=1 \
    PYTHONUNBUFFERED=1 \
    TORCH_HOME=/opt/medssl/torch \
    MPLCONFIGDIR=/tmp/matplotlib \
    PATH=/opt/medssl/.venv/bin:$PATH

# KubeRay starts `ray` through a login shell (bash -lc): keep the venv first on its PATH too.
RUN uv python install "${PYTHON_VERSION}" \
    && groupadd --gid 10001 medssl \
    && useradd --uid 10001 --gid medssl --create-home --shell /bin/bash medssl \
    && echo "export PATH=/opt/medssl/.venv/bin:\${PATH}" > /etc/profile.d/medssl.sh

WORKDIR /opt/medssl

# 1) the locked third-party dependencies only: this layer changes only with uv.lock.
#    Same `uv sync --frozen` as `make venv`, minus the dev group (tests check they agree).
COPY pyproject.toml uv.lock ./
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-install-project

# 2) optional pre-trained weights, where torchvision's hub lookup finds them
#    ($TORCH_HOME/hub/checkpoints/<file>; medssl.models.backbones.find_imagenet_weights).
ARG WEIGHTS_URL=""
ARG WEIGHTS_SHA256=""
RUN if [ -n "${WEIGHTS_URL}" ]; then \
        if [ -z "${WEIGHTS_SHA256}" ]; then echo "WEIGHTS_URL needs WEIGHTS_SHA256" >&2; exit 1; fi; \
        dest="${TORCH_HOME}/hub/checkpoints/$(basename "${WEIGHTS_URL}")"; \
        mkdir -p "$(dirname "${dest}")"; \
        python -c "import ssl, sys, urllib.request, certifi, shutil; ctx = ssl.create_default_context(cafile=certifi.where()); r = urllib.request.urlopen(sys.argv[1], context=ctx); shutil.copyfileobj(r, open(sys.argv[2], 'wb'))" "${WEIGHTS_URL}" "${dest}"; \
        echo "${WEIGHTS_SHA256}  ${dest}" | sha256sum --check --strict; \
    else \
        mkdir -p "${TORCH_HOME}/hub/checkpoints"; \
    fi

# 3) the package itself (small layer, rebuilt on every source change).
COPY README.md ./
COPY src ./src
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev \
    && python -c "import medssl.stages, medssl.cli"

USER 10001:10001
WORKDIR /home/medssl
# the repository's params.yaml as the defaults `medssl` reads from its working directory
COPY --chown=10001:10001 params.yaml ./

ARG VERSION=dev
ARG REVISION=unknown
LABEL org.opencontainers.image.title="medssl" \
      org.opencontainers.image.description="MLOps platform for self- and semi-supervised learning on medical-image archives" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/medssl/medssl" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"

ENTRYPOINT ["medssl"]
CMD ["--help"]
