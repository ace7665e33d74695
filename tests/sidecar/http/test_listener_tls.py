"""TLS on the proxy listener (``[server] tls_cert_file`` / ``tls_key_file``): the official
openai SDK over HTTPS with a local trustme CA, the admin port still plain, and the certificate
reloaded when its files change (as Kubernetes rotates a mounted Secret). Real sidecar process;
every wait is bounded.
"""

from __future__ import annotations

import os
import socket
import ssl
from pathlib import Path

import httpx
import openai
import pytest
import trustme
from cryptography import x509

from streamhop.middleware.errors import ConfigError
from streamhop.sidecar.config import config_from_dict
from tests.support import StreamhopProcess, serve, sidecar_config, wait_for

pytestmark = pytest.mark.integration


def write_pair(cert: trustme.LeafCert, directory: Path, name: str) -> tuple[Path, Path]:
    cert_file, key_file = directory / f"{name}.crt", directory / f"{name}.key"
    cert.private_key_and_cert_chain_pem.write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    return cert_file, key_file


def presented(url: str, ca: trustme.CA) -> int:
    """The serial number of the certificate the listener presents to a new connection."""
    host, port = url.removeprefix("https://").rsplit(":", 1)
    context = ssl.create_default_context()
    ca.configure_trust(context)
    with (
        socket.create_connection((host, int(port)), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=host) as tls,
    ):
        # Hex with an even number of digits (a leading 0 when needed): compare as numbers.
        return int(str(tls.getpeercert()["serialNumber"]), 16)


def serial(cert: trustme.LeafCert) -> int:
    pem = cert.cert_chain_pems[0].bytes()
    return int(x509.load_pem_x509_certificate(pem).serial_number)


def test_https_listener_serves_the_sdk_and_reloads_its_certificate(
    tmp_path: Path, simulator: StreamhopProcess
) -> None:
    ca = trustme.CA()
    first = ca.issue_cert("127.0.0.1")
    live = tmp_path / "live"
    live.mkdir()
    cert_file, key_file = write_pair(first, live, "tls")
    server = f'tls_cert_file = "{cert_file}"\ntls_key_file = "{key_file}"'
    proc = serve(tmp_path, sidecar_config(simulator.url, server=server), log_level="info")
    try:
        assert proc.url.startswith("https://")
        assert proc.admin_url is not None and proc.admin_url.startswith("http://")
        assert httpx.get(proc.admin_url + "/healthz", timeout=10).status_code == 200
        trusted = ssl.create_default_context()
        ca.configure_trust(trusted)
        with (
            httpx.Client(verify=trusted, timeout=30) as http,
            openai.OpenAI(
                base_url=proc.url + "/v1", api_key="x", max_retries=0, http_client=http
            ) as client,
        ):
            stream = client.chat.completions.create(
                model="sim", messages=[{"role": "user", "content": "hi"}], stream=True,
                max_tokens=20,
            )  # fmt: skip
            text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        assert text
        assert presented(proc.url, ca) == serial(first)
        # A rotation: the new pair is written beside, then moved over the old names at once.
        second = ca.issue_cert("127.0.0.1")
        new_cert, new_key = write_pair(second, tmp_path, "next")
        os.replace(new_key, key_file)
        os.replace(new_cert, cert_file)
        wait_for(
            lambda: presented(proc.url, ca) == serial(second),
            15,
            f"the new certificate; sidecar log: {proc.stderr[-2000:]}",
        )
        wait_for(lambda: "TLS certificate reloaded" in proc.stderr, 15, "the reload's log line")
    finally:
        proc.stop()


def test_a_listener_certificate_without_its_key_is_refused_at_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"server\.tls_key_file"):
        config_from_dict({"server": {"tls_cert_file": "/x.crt"}, "routes": []})
