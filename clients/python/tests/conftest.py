"""A real segmentd on a free loopback port for the tests."""

import contextlib
import pathlib

import pytest

from segmentd.testing import free_port, local_server, server_binary

REPO = pathlib.Path(__file__).resolve().parents[3]


def _binary() -> str:
    return server_binary(REPO)


_free_port = free_port


@pytest.fixture(scope="session")
def server_bin() -> str:
    return _binary()


@contextlib.contextmanager
def _server(server_bin, extra=(), token=None, **client_args):
    """A segmentd on a free port with a temporary data directory; yields a ready client and its port."""
    with local_server(server_bin, extra, token=token, timeout=10, **client_args) as server:
        yield server.client, server.port


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
