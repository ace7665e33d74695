# streamhop: the sidecar / gateway image.
#
#   docker build -t streamhop:0.1.0 .                          # from python:3.12-slim
#   docker build --build-arg BASE=my-registry/python:3.12 .    # any Debian-like base with python3 -m venv
#
# The first stage builds streamhop's wheel and the wheels of its dependencies (all of them ship
# binary wheels, so no compiler is needed, and none is in the final stage); the final stage
# installs them into /opt/streamhop without network access. The process runs as UID 10001 and
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
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY middleware/ middleware/
COPY sidecar/ sidecar/
RUN python3 -m venv /opt/build \
 && /opt/build/bin/pip wheel --wheel-dir /wheels . \
 && python3 -m venv /opt/streamhop \
 && /opt/streamhop/bin/pip install --no-index --find-links /wheels /wheels/streamhop-*.whl \
 && /opt/streamhop/bin/python -m pip uninstall --yes pip \
 && /opt/streamhop/bin/streamhop --help >/dev/null

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
