"""A real segmentd on a free loopback port for the tests."""

import contextlib
import os
import pathlib
import socket
import subprocess
import tempfile
import time

import pytest

from segmentd import Client, SegmentdError

REPO = pathlib.Path(__file__).resolve().parents[3]


def _binary() -> str:
    explicit = os.environ.get("SEGMENTD_BIN")
    if explicit:
        return explicit
    subprocess.run(["cargo", "build", "--bin", "segmentd"], cwd=REPO, check=True)
    return str(REPO / "target" / "debug" / "segmentd")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def server_bin() -> str:
    return _binary()


@contextlib.contextmanager
def _server(server_bin, extra=(), token=None, **client_args):
    """A segmentd on a free port with a temporary data directory; yields a ready client."""
    with tempfile.TemporaryDirectory() as data:
        port = _free_port()
        proc = subprocess.Popen(
            [server_bin, "--listen", f"127.0.0.1:{port}", "--data-dir", data, "--fsync", "never", *extra],
            stderr=subprocess.PIPE,
        )
        host = "localhost" if client_args.get("tls_ca") else "127.0.0.1"
        c = Client(f"{host}:{port}", timeout=10, token=token, **client_args)
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    c.stats()
                    break
                except SegmentdError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"segmentd did not start: {proc.stderr.read().decode()}")
                    time.sleep(0.05)
            yield c, port
        finally:
            c.close()
            proc.terminate()
            proc.wait(timeout=20)


@pytest.fixture
def client(server_bin):
    with _server(server_bin) as (c, _):
        yield c


ADMIN_TOKEN = "admin-token-0123456789"


@pytest.fixture
def secured(server_bin, tmp_path):
    """A server with roles; yields (admin client, port)."""
    tokens = tmp_path / "tokens"
    tokens.write_text(f"admin {ADMIN_TOKEN}\nreader reader-token-0123456789\n")
    with _server(server_bin, ["--tokens-file", str(tokens)], token=ADMIN_TOKEN) as (c, port):
        yield c, port


TLS = REPO / "tests" / "fixtures" / "tls"


@pytest.fixture
def tls_server(server_bin):
    """A server with mutual TLS (test certificates); yields (client with a certificate, port)."""
    extra = [
        "--tls-cert", str(TLS / "server.pem"),
        "--tls-key", str(TLS / "server.key"),
        "--tls-client-ca", str(TLS / "ca.pem"),
    ]
    identity = {"tls_ca": str(TLS / "ca.pem"), "tls_cert": str(TLS / "client.pem"), "tls_key": str(TLS / "client.key")}
    with _server(server_bin, extra, **identity) as (c, port):
        yield c, port
