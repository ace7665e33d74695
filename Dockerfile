# streamhop: the sidecar / gateway image.
#
#   docker build -t streamhop:0.1.0 .                          # from python:3.12-slim
#   docker build --build-arg BASE=my-registry/python:3.12 .    # any Debian-like base with python3 -m venv
#
# The first stage builds streamhop's wheel, its engine compiled with mypyc (setup.py; gcc and the
# Python headers are installed there, and the build fails if the engine came out uncompiled),
# and the wheels of its dependencies (all binary); the final stage has no compiler and installs
# them into /opt/streamhop without network access. The process runs as UID 10001 and
# writes nothing to the root filesystem, so it runs with readOnlyRootFilesystem. `streamhop` is
# PID 1 (exec form), so SIGTERM reaches it and starts the drain ([server] drain_timeout_s).
ARG BASE=python:3.12-slim

FROM ${BASE} AS build
# A package index mirror and its CA bundle, for builds behind a proxy (empty: PyPI).
ARG PIP_INDEX_URL
ARG PIP_CERT
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
# `--build-arg STREAMHOP_PURE_PYTHON=1`: no compiler, a pure-Python engine (same behaviour,
# about 20 % more CPU per event); for a base without apt or a Debian mirror.
ARG STREAMHOP_PURE_PYTHON=
# A C compiler and the Python headers for the engine's mypyc build, in this stage only (an
# official python image has the headers; Debian's python3 needs python3-dev).
# hadolint ignore=DL3008
RUN if [ -z "${STREAMHOP_PURE_PYTHON}" ]; then \
      apt-get update \
      && apt-get install -y --no-install-recommends gcc libc6-dev \
      && { python3 -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
           || apt-get install -y --no-install-recommends python3-dev; } \
      && rm -rf /var/lib/apt/lists/*; \
    fi
WORKDIR /src
COPY pyproject.toml setup.py README.md LICENSE ./
COPY middleware/ middleware/
COPY sidecar/ sidecar/
RUN python3 -m venv /opt/build \
 && /opt/build/bin/pip wheel --wheel-dir /wheels . \
 && python3 -m venv /opt/streamhop \
 && /opt/streamhop/bin/pip install --no-index --find-links /wheels /wheels/streamhop-*.whl \
 && /opt/streamhop/bin/python -m pip uninstall --yes pip \
 && /opt/streamhop/bin/streamhop --help >/dev/null \
 && if [ -z "${STREAMHOP_PURE_PYTHON}" ]; then \
      /opt/streamhop/bin/python -c 'from streamhop.middleware.engine_build import engine_build as b; assert b() == "compiled", b()'; \
    fi

FROM ${BASE}
ARG UID=10001
# A default config for `docker run`: listen on every interface, one route. The Helm chart mounts
# its own over /etc/streamhop.
RUN groupadd --gid "${UID}" streamhop \
 && useradd --no-log-init --uid "${UID}" --gid "${UID}" --home-dir /nonexistent \
      --no-create-home --shell /usr/sbin/nologin streamhop \
 && mkdir -p /etc/streamhop \
 && printf '%s\n' \
      '[server]' \
      'listen = "0.0.0.0:8787"' \
      'admin_listen = "0.0.0.0:9464"' \
      '' \
      '[[routes]]' \
      'prefix = "/"' \
      'upstream = "https://api.cerebras.ai"' \
      > /etc/streamhop/streamhop.toml
COPY --from=build /opt/streamhop /opt/streamhop
ENV PATH=/opt/streamhop/bin:${PATH} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER ${UID}:${UID}
# 8787: the proxy (your SDK's base_url); 9464: admin (/metrics, /healthz, /readyz).
EXPOSE 8787 9464
STOPSIGNAL SIGTERM
ENTRYPOINT ["/opt/streamhop/bin/streamhop"]
CMD ["serve", "--config", "/etc/streamhop/streamhop.toml"]
