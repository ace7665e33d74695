"""Starting and stopping what bench/peers.py measures: the simulator and each proxy.

Every process is started through :mod:`bench.processes` (remembered by PID, stopped by that
PID); every listener binds 127.0.0.1; every generated config lives in a temp dir that
:meth:`Target.stop` removes. :class:`SimLog` reads the simulator's stream log. A peer that is
not installed, or does not answer a first request, becomes a :class:`Target` with ``missing``
set to the reason, so the report can say so.

Peers, as configured here (the choices a user of each would make for streaming):

* ``nginx``: Debian's package, one worker (streamhop is one process too), ``proxy_buffering
  off``, HTTP/1.1 keep-alive to the upstream, access log off.
* ``litellm``: ``litellm --config`` from its own venv (bench/setup_peers.sh), one uvicorn worker,
  an ``openai/`` model whose ``api_base`` is the simulator, a random master key (LiteLLM refuses
  to start without one), client ``x-`` headers forwarded (so the simulator sees the request id),
  uvicorn's access log off.
* ``portkey``: ``@portkey-ai/gateway`` on Node, ``--headless``; provider ``openai`` with the
  simulator as ``x-portkey-custom-host``; two preloads from bench/setup_peers.sh:
  ``loopback-listen.cjs`` (the gateway listens on every interface; this binds it to 127.0.0.1)
  and ``mutable-fetch-headers.cjs`` (without it, 1.15.2 answers every streamed request 500:
  it appends ``x-portkey-*`` headers to the upstream fetch Response, whose headers are
  immutable on Node: "TypeError: immutable").
* ``streamhop``: ``streamhop serve --upstream``, log level warning, in ``coalesce`` and in
  ``passthrough`` mode (two processes, so each has its own CPU and RSS figures).

The TLS upstream (:class:`Tls`, :func:`tls_front`): ``streamhop simulate`` serves plain HTTP
only, so an nginx process in front of it terminates TLS (``listen ... ssl``, a certificate for
``localhost`` and ``127.0.0.1`` from a local CA made by ``trustme``, ``proxy_buffering off``:
one TLS record per event, as a provider writes). Every target of the TLS scenarios is a second
process of the same peer pointed at ``https://127.0.0.1:FRONT`` that trusts that CA
(:func:`tls_twin`): nginx through ``proxy_ssl_trusted_certificate`` + ``proxy_ssl_verify on``,
streamhop through ``SSL_CERT_FILE`` (aiohttp's default context loads OpenSSL's default paths,
which honour it), LiteLLM through ``SSL_CERT_FILE`` and ``REQUESTS_CA_BUNDLE``, Portkey through
``NODE_EXTRA_CA_CERTS``; ``direct`` is the client speaking TLS to the front itself.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import shutil
import ssl
import subprocess
import sys
import tempfile
import threading
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.peers_client import Endpoint
from bench.processes import (
    Process,
    StartError,
    free_port,
    start,
    start_sidecar,
    start_streamhop,
)

ROOT = Path(__file__).resolve().parent.parent
PEERS = ROOT / "build" / "peers"
PORTKEY_ENTRY = PEERS / "portkey/node_modules/@portkey-ai/gateway/build/start-server.js"


@dataclass
class Target:
    """One thing the client talks to.

    Attributes:
        name: short id used in the report (``direct``, ``nginx``, ...).
        label: what it is, with its version.
        endpoint: where requests go; ``None`` when missing.
        proc: the root process we started (``None`` for ``direct`` and missing targets).
        notes: extra lines for the report.
        passthrough_like: forwards each upstream event as its own event (transit is defined).
        missing: why the target could not be measured, else ``None``.
        tmpdir: generated config and logs, removed on stop.
    """

    name: str
    label: str
    endpoint: Endpoint | None = None
    proc: Process | None = None
    passthrough_like: bool = True
    missing: str | None = None
    tmpdir: Path | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int | None:
        """PID of the root of the process tree (``None`` for ``direct``)."""
        return self.proc.pid if self.proc is not None else None

    def stop(self) -> None:
        """Stop the process we started (by PID) and remove the temp dir."""
        if self.proc is not None:
            self.proc.stop()
        if self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = None


def _log_tail(tmpdir: Path, name: str) -> str:
    path = tmpdir / name
    if not path.exists():
        return ""
    lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    # The line that names the error beats the last frame of a stack trace.
    errors = [ln for ln in lines if "Error" in ln and not ln.startswith("at ")]
    pick = errors[-1] if errors else lines[-1] if lines else ""
    return f" — log: {pick[:200]}" if pick else ""


def launch(
    target: Target,
    argv: list[str],
    *,
    env: dict[str, str] | None = None,
    timeout_s: float,
    log: str = "out.log",
) -> Target:
    """Start ``argv`` for ``target`` (its endpoint's port, its temp dir as cwd), wait until the
    port accepts a connection, then check one small streamed answer (:func:`smoke`).

    Output goes to ``out.log`` in the temp dir; ``log`` names the file whose last error line a
    failure quotes (nginx writes ``error.log``). A target that fails comes back with
    ``missing`` set and nothing left running.
    """
    assert target.endpoint is not None and target.tmpdir is not None
    try:
        target.proc = start(
            argv,
            name=target.name,
            port=target.endpoint.port,
            timeout_s=timeout_s,
            env=env,
            cwd=target.tmpdir,
            log=target.tmpdir / "out.log",
        )
    except StartError as exc:
        return _failed(target, str(exc), log)
    problem = smoke(target.endpoint)
    return _failed(target, problem, log) if problem is not None else target


def _failed(target: Target, problem: str, log: str) -> Target:
    tail = _log_tail(target.tmpdir, log) if target.tmpdir else ""
    target.stop()
    target.missing = f"{problem}{tail}"
    target.endpoint = None
    target.proc = None
    return target


def start_simulator(events_per_second: float, tokens_per_event: float, ttft_ms: float) -> Process:
    """Start ``streamhop simulate``; its ``url`` is the base URL.

    One write per event (``--no-split-writes``): split writes exercise decoders in the tests;
    here they would triple the simulator's writes and make it the bottleneck sooner.
    """
    return start_streamhop(
        [
            "simulate",
            "--listen",
            "127.0.0.1:0",
            "--ttft-ms",
            f"{ttft_ms:g}",
            "--events-per-second",
            f"{events_per_second:g}",
            "--tokens-per-second",
            f"{events_per_second * tokens_per_event:g}",
            "--no-split-writes",
        ],
        name="simulator",
    )


class SimLog:
    """Keeps the simulator's stream records: it holds only the last 1,000, so it is polled
    (every ``every_s`` seconds) while used as a context manager."""

    def __init__(self, sim_url: str, every_s: float = 1.0) -> None:
        self._url = sim_url + "/_simulator/streams"
        self._every_s = every_s
        self.records: dict[str, dict[str, Any]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def fetch(self) -> list[dict[str, Any]]:
        """Read the records the simulator holds now and keep them (by stream id)."""
        with urllib.request.urlopen(self._url, timeout=30) as response:
            records: list[dict[str, Any]] = json.loads(response.read())
        for record in records:
            self.records[record["id"]] = record
        return records

    def clear(self) -> None:
        """Empty the simulator's log and ours."""
        request = urllib.request.Request(self._url, method="DELETE")
        urllib.request.urlopen(request, timeout=30).close()
        self.records = {}

    def running(self) -> int:
        """How many streams the simulator is still sending."""
        return sum(1 for r in self.fetch() if r["outcome"] is None)

    def __enter__(self) -> SimLog:
        self._stop.clear()

        def poll() -> None:
            while not self._stop.wait(self._every_s):
                with contextlib.suppress(OSError):
                    self.fetch()

        self._thread = threading.Thread(target=poll, name="sim-log", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.fetch()


def _port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def direct(sim_url: str, tls: Tls | None = None) -> Target:
    """The simulator itself, no proxy: the baseline (with ``tls``: its TLS front)."""
    context = tls.client_context() if tls is not None else None
    return Target(
        "direct", "direct (no proxy)", Endpoint("127.0.0.1", _port_of(sim_url), tls=context)
    )


NGINX_CONF = """\
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    upstream simulator {{
        server 127.0.0.1:{upstream};
        keepalive 256;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://simulator;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_read_timeout 600s;
        }}
    }}
}}
"""


# The TLS variant of the location: the upstream is the TLS front, verified against the local CA.
NGINX_TLS_LOCATION = """\
            proxy_pass https://simulator;
            proxy_ssl_trusted_certificate {ca};
            proxy_ssl_verify on;
            proxy_ssl_name localhost;
            proxy_ssl_server_name on;
            proxy_ssl_session_reuse on;
"""


def _nginx_binary() -> str | None:
    return shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )


def nginx(sim_url: str, tls: Tls | None = None) -> Target:
    """nginx, ``proxy_buffering off``, as a plain process with a config in a temp dir.

    With ``tls``, ``sim_url`` is the TLS front and nginx verifies it against ``tls.ca_file``.
    """
    binary = _nginx_binary()
    if binary is None:
        return Target("nginx", "nginx", missing=_missing_note("nginx", "nginx is not installed"))
    version = subprocess.run([binary, "-v"], capture_output=True, text=True).stderr.strip()
    tmp = Path(tempfile.mkdtemp(prefix="streamhop-peers-nginx-"))
    tmp.chmod(0o755)  # the worker drops root and must reach its temp paths
    port = free_port()
    conf = tmp / "nginx.conf"
    text = NGINX_CONF.format(tmp=tmp, upstream=_port_of(sim_url), port=port)
    if tls is not None:
        text = text.replace(
            "            proxy_pass http://simulator;\n",
            NGINX_TLS_LOCATION.format(ca=tls.ca_file),
        )
    conf.write_text(text)
    target = Target(
        "nginx",
        f"nginx {version.rsplit('/', 1)[-1]} (proxy_buffering off, 1 worker)",
        Endpoint("127.0.0.1", port),
        tmpdir=tmp,
    )
    argv = [binary, "-p", str(tmp), "-c", str(conf), "-e", str(tmp / "error.log")]
    return launch(target, argv, timeout_s=15, log="error.log")


LITELLM_CONF = """\
model_list:
  - model_name: sim
    litellm_params:
      model: openai/sim
      api_base: {sim_url}/v1
      api_key: sk-simulator
general_settings:
  master_key: {master_key}
  forward_client_headers_to_llm_api: true
  trusted_proxy_ranges: []
litellm_settings:
  telemetry: false
"""

# uvicorn's access log off, as for the other targets (nginx: access_log off; streamhop: warning).
UVICORN_LOG_CONFIG = {
    "version": 1,
    "disable_existing_loggers": False,
    "loggers": {"uvicorn.access": {"level": "WARNING"}, "uvicorn.error": {"level": "WARNING"}},
}


def litellm(sim_url: str, tls: Tls | None = None) -> Target:
    """LiteLLM proxy from build/peers/litellm-venv, one worker."""
    venv = PEERS / "litellm-venv"
    binary = venv / "bin" / "litellm"
    if not binary.exists():
        return Target(
            "litellm", "LiteLLM proxy", missing=_missing_note("litellm", f"{binary} not found")
        )
    version = subprocess.run(
        [
            str(venv / "bin/python"),
            "-c",
            "import importlib.metadata as m; print(m.version('litellm'))",
        ],
        capture_output=True,
        text=True,
    ).stdout.strip()
    tmp = Path(tempfile.mkdtemp(prefix="streamhop-peers-litellm-"))
    key = "sk-" + secrets.token_hex(24)
    (tmp / "config.yaml").write_text(LITELLM_CONF.format(sim_url=sim_url, master_key=key))
    (tmp / "log.json").write_text(json.dumps(UVICORN_LOG_CONFIG))
    port = free_port()
    target = Target(
        "litellm",
        f"LiteLLM proxy {version} (1 uvicorn worker)",
        Endpoint("127.0.0.1", port, headers=f"Authorization: Bearer {key}\r\n".encode()),
        tmpdir=tmp,
    )
    return launch(
        target,
        [
            str(binary),
            "--config",
            str(tmp / "config.yaml"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--num_workers",
            "1",
            "--log_config",
            str(tmp / "log.json"),
        ],
        # The model price map is fetched from the internet at import unless told otherwise.
        env={
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "LITELLM_LOG": "ERROR",
            **(tls.env() if tls is not None else {}),
        },
        timeout_s=180,
    )


def portkey(sim_url: str, *, headers_shim: bool = True, tls: Tls | None = None) -> Target:
    """The Portkey gateway on Node, with the preloads from bench/setup_peers.sh."""
    node = shutil.which("node")
    shims = [PEERS / "portkey/loopback-listen.cjs"]
    if headers_shim:
        shims.append(PEERS / "portkey/mutable-fetch-headers.cjs")
    absent = [p for p in (PORTKEY_ENTRY, *shims) if not p.exists()]
    if node is None or absent:
        why = "node is not installed" if node is None else f"{absent[0]} not found"
        return Target("portkey", "Portkey gateway", missing=_missing_note("portkey", why))
    package = json.loads((PORTKEY_ENTRY.parent.parent / "package.json").read_text())
    tmp = Path(tempfile.mkdtemp(prefix="streamhop-peers-portkey-"))
    port = free_port()
    argv = [node]
    for shim in shims:
        argv += ["--require", str(shim)]
    headers = (
        "x-portkey-provider: openai\r\n"
        f"x-portkey-custom-host: {sim_url}/v1\r\n"
        "x-portkey-forward-headers: x-request-id\r\n"
        "Authorization: Bearer sk-simulator\r\n"
    ).encode()
    shim_note = "mutable-headers shim" if headers_shim else "no shim"
    target = Target(
        "portkey",
        f"Portkey gateway {package['version']} (Node {_node_version(node)}, {shim_note})",
        Endpoint("127.0.0.1", port, headers=headers),
        tmpdir=tmp,
    )
    return launch(
        target,
        [*argv, str(PORTKEY_ENTRY), f"--port={port}", "--headless"],
        env=tls.env() if tls is not None else None,
        timeout_s=60,
    )


def _node_version(node: str) -> str:
    return subprocess.run([node, "--version"], capture_output=True, text=True).stdout.strip()


def streamhop(
    sim_url: str,
    mode: str,
    tls: Tls | None = None,
    *,
    coalesce_reads: bool = False,
    workers: int = 1,
) -> Target:
    """``streamhop serve --upstream`` in ``mode`` (coalesce or passthrough); with
    ``coalesce_reads``, ``[rechunk] coalesce_reads = true`` too (target ``streamhop-<mode>-reads``);
    with ``workers`` above 1, ``[server] workers`` (target ``streamhop-<workers>-workers``, its
    CPU and RSS those of the supervisor and its workers together).

    With ``tls`` it trusts the local CA through ``SSL_CERT_FILE`` (in the child's environment).
    """
    tmp = Path(tempfile.mkdtemp(prefix=f"streamhop-peers-{mode}-"))
    config = tmp / "streamhop.toml"
    reads = "true" if coalesce_reads else "false"
    config.write_text(
        f'[server]\nworkers = {workers}\n[rechunk]\nmode = "{mode}"\ncoalesce_reads = {reads}\n'
    )
    name = f"streamhop-{mode}" + ("-reads" if coalesce_reads else "")
    if workers > 1:
        name = f"streamhop-{workers}-workers"
    try:
        proc = start_sidecar(
            sim_url,
            "--config",
            str(config),
            name=name,
            env=tls.env() if tls is not None else None,
        )
    except StartError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        return Target(name, f"streamhop {mode}", missing=f"did not start: {exc}")
    from importlib.metadata import version

    assert proc.url is not None
    endpoint = Endpoint("127.0.0.1", _port_of(proc.url))
    target = Target(
        name,
        f"streamhop {version('streamhop')} {mode}"
        + (", coalesce_reads" if coalesce_reads else "")
        + (f", {workers} workers" if workers > 1 else ""),
        endpoint,
        proc,
        passthrough_like=mode == "passthrough",
        tmpdir=tmp,
    )
    problem = smoke(endpoint)
    if problem is not None and proc.tail():
        problem += f" — output: {proc.tail().splitlines()[-1][:200]}"
    return _failed(target, problem, "out.log") if problem is not None else target


class Tls:
    """A local CA (``trustme``) and a server certificate for ``localhost`` and ``127.0.0.1``.

    Files live in a temp dir (removed by :meth:`close`), readable by nginx's workers.
    """

    def __init__(self) -> None:
        import trustme

        self.version = _dist_version("trustme")
        self.dir = Path(tempfile.mkdtemp(prefix="streamhop-peers-tls-"))
        self.dir.chmod(0o755)
        ca = trustme.CA()
        cert = ca.issue_cert("localhost", "127.0.0.1")
        self.ca_file = self.dir / "ca.pem"
        self.cert_file = self.dir / "server.pem"  # leaf + chain
        self.key_file = self.dir / "server.key"
        ca.cert_pem.write_to_path(str(self.ca_file))
        cert.private_key_pem.write_to_path(str(self.key_file))
        self.cert_file.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
        for path in (self.ca_file, self.cert_file, self.key_file):
            path.chmod(0o644)

    def env(self) -> dict[str, str]:
        """What makes a proxy's default trust store the local CA."""
        ca = str(self.ca_file)
        return {"SSL_CERT_FILE": ca, "REQUESTS_CA_BUNDLE": ca, "NODE_EXTRA_CA_CERTS": ca}

    def client_context(self) -> ssl.SSLContext:
        """The bench client's context (``direct``): verifies against the local CA."""
        context = ssl.create_default_context(cafile=str(self.ca_file))
        return context

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def _dist_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "?"


NGINX_TLS_FRONT_CONF = """\
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    keepalive_requests 100000;
    upstream simulator {{
        server 127.0.0.1:{upstream};
        keepalive 512;
    }}
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_session_cache shared:tls:1m;
        location / {{
            proxy_pass http://simulator;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_read_timeout 600s;
        }}
    }}
}}
"""


def tls_front(sim_url: str, tls: Tls) -> Target:
    """nginx terminating TLS in front of the simulator: the HTTPS upstream of every target.

    Returns a :class:`Target` named ``tls-front`` (its endpoint speaks TLS), or one with
    ``missing`` set when nginx is absent or the front does not answer.
    """
    binary = _nginx_binary()
    if binary is None:
        return Target("tls-front", "TLS front", missing="nginx is not installed")
    tmp = Path(tempfile.mkdtemp(prefix="streamhop-peers-tlsfront-"))
    tmp.chmod(0o755)
    port = free_port()
    conf = tmp / "nginx.conf"
    conf.write_text(
        NGINX_TLS_FRONT_CONF.format(
            tmp=tmp,
            upstream=_port_of(sim_url),
            port=port,
            cert=tls.cert_file,
            key=tls.key_file,
        )
    )
    target = Target(
        "tls-front",
        "nginx terminating TLS in front of the simulator",
        Endpoint("127.0.0.1", port, tls=tls.client_context()),
        tmpdir=tmp,
    )
    argv = [binary, "-p", str(tmp), "-c", str(conf), "-e", str(tmp / "error.log")]
    return launch(target, argv, timeout_s=15, log="error.log")


def _missing_note(name: str, why: str) -> str:
    note = PEERS / f"{name}.missing"
    setup = f" (bench/setup_peers.sh said: {note.read_text().strip()})" if note.exists() else ""
    return f"{why}{setup}; run bash bench/setup_peers.sh"


def smoke(endpoint: Endpoint) -> str | None:
    """Return why a 20-token streamed request through ``endpoint`` fails, or ``None``."""
    body = json.dumps(
        {
            "model": "sim",
            "messages": [{"role": "user", "content": "warm up"}],
            "max_tokens": 20,
            "stream": True,
        }
    ).encode()
    headers = {"Content-Type": "application/json"}
    for line in endpoint.headers.decode().split("\r\n"):
        if line:
            key, _, value = line.partition(": ")
            headers[key] = value
    scheme = "https" if endpoint.tls is not None else "http"
    url = f"{scheme}://{endpoint.host}:{endpoint.port}{endpoint.path}"
    for _ in range(3):
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=30, context=endpoint.tls) as response:
                text = response.read()
        except OSError as exc:
            detail = exc.read()[:200].decode(errors="replace") if hasattr(exc, "read") else ""
            return f"first request failed: {exc} {detail}".strip()
        if not re.search(rb'"content": ?"[^"]', text):
            return f"first request answered without content: {text[:200]!r}"
    return None


def python_version() -> str:
    """The interpreter that runs streamhop here."""
    return sys.version.split()[0]
