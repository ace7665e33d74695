#!/usr/bin/env bash
# Install the peers that bench/peers.py measures streamhop against, without touching the
# project's own venv beyond its `bench` extra:
#
#   nginx    Debian's package (apt-get). Not started as a service: bench/peers.py runs it as a
#            plain process with a generated config in a temp dir, bound to 127.0.0.1 only.
#   LiteLLM  PyPI `litellm[proxy]` in its own venv, build/peers/litellm-venv/ (its dependency
#            tree is large and pins versions the project does not want).
#   Portkey  npm `@portkey-ai/gateway` under build/peers/portkey/, plus two preloads (see below)
#            that bench/peers.py passes with `node --require`.
#
# A peer that fails to install leaves build/peers/<name>.missing with the reason; bench/peers.py
# reports it as missing instead of silently dropping it. The other peers still install.
#
# Usage: bash bench/setup_peers.sh            (from a clone; as root, or with sudo for apt-get)
# Versions: LITELLM_VERSION=1.106.12 PORTKEY_VERSION=1.15.2 by default; override in the
# environment. Pinned on purpose: a benchmark in docs/ must name what it ran, and a proxy that
# sees your provider keys is not something to take at "latest" unseen (LiteLLM 1.107.0 was a
# compromised release). 1.106.12 is the newest LiteLLM whose `[proxy]` extra resolved from PyPI
# when this was written: 1.108.x pins `litellm-proxy-extras`/`litellm-enterprise` post-releases
# that PyPI does not serve, and 1.110.x requires a `litellm-proxy` distribution it does not serve.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PEERS="$ROOT/build/peers"
LITELLM_VERSION="${LITELLM_VERSION:-1.106.12}"
PORTKEY_VERSION="${PORTKEY_VERSION:-1.15.2}"
PYTHON="${PYTHON:-python3}"
mkdir -p "$PEERS"

missing() {  # missing NAME REASON...
    local name="$1"; shift
    echo "$*" >"$PEERS/$name.missing"
    echo "setup_peers: $name NOT installed: $*" >&2
}

installed() {  # installed NAME
    rm -f "$PEERS/$1.missing"
    echo "setup_peers: $1 ready"
}

# --- the benchmark's own Python dependencies (matplotlib, psutil) into the project's venv -----
if [ -x "$ROOT/.venv/bin/pip" ]; then
    "$ROOT/.venv/bin/pip" install -q -e "$ROOT[bench]" || echo "setup_peers: pip install .[bench] failed" >&2
else
    echo "setup_peers: no $ROOT/.venv; create it first: python3 -m venv .venv && .venv/bin/pip install -e '.[bench]'" >&2
fi

# --- nginx --------------------------------------------------------------------------------------
if command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ]; then
    installed nginx
else
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    # Debian's postinst would start nginx as a service on port 80; a policy-rc.d that says "no"
    # keeps the machine's ports alone (only created, and removed again, if there is none).
    made_policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
        $SUDO chmod +x /usr/sbin/policy-rc.d
        made_policy=1
    fi
    if $SUDO apt-get update -q >/dev/null && \
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends nginx >/dev/null; then
        installed nginx
    else
        missing nginx "apt-get install nginx failed (exit $?)"
    fi
    [ -n "$made_policy" ] && $SUDO rm -f /usr/sbin/policy-rc.d
fi

# --- LiteLLM proxy, in its own venv ---------------------------------------------------------------
LVENV="$PEERS/litellm-venv"
if [ -x "$LVENV/bin/litellm" ] && "$LVENV/bin/python" -c "import litellm" 2>/dev/null; then
    installed litellm
elif "$PYTHON" -m venv "$LVENV" && \
    "$LVENV/bin/pip" install -q "litellm[proxy]==$LITELLM_VERSION"; then
    installed litellm
else
    missing litellm "pip install litellm[proxy]==$LITELLM_VERSION into $LVENV failed"
fi

# --- Portkey gateway -------------------------------------------------------------------------------
PK="$PEERS/portkey"
mkdir -p "$PK"
if ! command -v node >/dev/null 2>&1; then
    missing portkey "node is not installed (apt-get install nodejs npm)"
elif (cd "$PK" && npm install --silent --no-audit --no-fund "@portkey-ai/gateway@$PORTKEY_VERSION" >/dev/null); then
    # Two preloads that bench/peers.py passes with `node --require`:
    #
    # mutable-fetch-headers.cjs — needed by 1.15.2, the current release when this was written
    # (check a newer one with `.venv/bin/python -m bench.peers --portkey-no-shim --targets portkey`).
    # For a streamed answer the gateway hands on the Response that Node's fetch (undici)
    # returned and then appends its x-portkey-* headers to it; a fetch Response's headers are
    # immutable, so every streamed request fails with "TypeError: immutable" and a 500. The
    # shim wraps globalThis.fetch so that each Response carries a fresh, mutable Headers copy;
    # the body stream is handed on untouched (nothing is buffered).
    cat >"$PK/mutable-fetch-headers.cjs" <<'JS'
// Preload (node --require) for @portkey-ai/gateway: make fetch() responses' headers mutable.
'use strict';
const realFetch = globalThis.fetch;
globalThis.fetch = async function fetchWithMutableHeaders(...args) {
  const res = await realFetch.apply(this, args);
  const copy = new Response(res.body, {
    status: res.status,
    statusText: res.statusText,
    headers: new Headers(res.headers),
  });
  Object.defineProperty(copy, 'url', { value: res.url });
  return copy;
};
JS
    # loopback-listen.cjs — the gateway's server listens on every interface and has no flag for
    # the address; the benchmark must stay on loopback, so listen() without a host gets
    # 127.0.0.1.
    cat >"$PK/loopback-listen.cjs" <<'JS'
// Preload (node --require): a net.Server.listen() without a host binds 127.0.0.1 only.
'use strict';
const net = require('net');
const realListen = net.Server.prototype.listen;
net.Server.prototype.listen = function listenOnLoopback(...args) {
  if (typeof args[0] === 'number' && typeof args[1] !== 'string') {
    args.splice(1, 0, '127.0.0.1');
  } else if (args[0] && typeof args[0] === 'object' && args[0].host === undefined
             && args[0].path === undefined) {
    args[0] = { ...args[0], host: '127.0.0.1' };
  }
  return realListen.apply(this, args);
};
JS
    installed portkey
else
    missing portkey "npm install @portkey-ai/gateway@$PORTKEY_VERSION failed"
fi

echo "setup_peers: done; see build/peers/*.missing for anything that did not install"
