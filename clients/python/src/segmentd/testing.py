"""A real segmentd for tests: a server process on a free loopback port with a temporary data
directory, and a client connected once it answers.

    from segmentd.testing import local_server

    with local_server("target/debug/segmentd", ["--size-sample-secs", "1"]) as server:
        server.client.create_segment("women", rule_text='gender = "F"')
        ... server.port, server.process ...

The server's log goes to a temporary file (a pipe nobody reads would fill and stall it) and is
part of the error when it does not start.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Sequence

from segmentd.client import Client, SegmentdError


def server_binary(checkout: pathlib.Path) -> str:
    """The server to test: `SEGMENTD_BIN` when set, else `target/debug/segmentd` of the
    `checkout`, built with cargo first."""
    explicit = os.environ.get("SEGMENTD_BIN")
    if explicit:
        return explicit
    subprocess.run(["cargo", "build", "--bin", "segmentd"], cwd=checkout, check=True)
    return str(checkout / "target" / "debug" / "segmentd")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class LocalServer:
    """A running server: its client (closed on exit), gRPC port, process and data directory."""

    client: Client
    port: int
    process: "subprocess.Popen[bytes]"
    data_dir: pathlib.Path


@contextlib.contextmanager
def local_server(
    binary: str,
    args: Sequence[str] = (),
    *,
    token: Optional[str] = None,
    start_timeout: float = 30.0,
    **client_args: Any,
) -> Iterator[LocalServer]:
    """Starts `binary` with `--listen 127.0.0.1:<free port> --data-dir <temporary> --fsync never`
    and `args`, waits until `Admin.Stats` answers (with `token`), yields it, then stops it
    (SIGTERM). `client_args` go to `Client` (`tls_ca` makes it connect to `localhost`)."""
    with tempfile.TemporaryDirectory() as tmp:
        data = pathlib.Path(tmp) / "data"
        port = free_port()
        with open(pathlib.Path(tmp) / "segmentd.log", "w+b") as log:
            proc = subprocess.Popen(
                [binary, "--listen", f"127.0.0.1:{port}", "--data-dir", str(data), "--fsync", "never", *args],
                stderr=log,
            )
            host = "localhost" if client_args.get("tls_ca") else "127.0.0.1"
            client = Client(f"{host}:{port}", timeout=client_args.pop("timeout", 20), token=token, **client_args)
            try:
                deadline = time.monotonic() + start_timeout
                while True:
                    try:
                        client.stats()
                        break
                    except SegmentdError:
                        if proc.poll() is not None or time.monotonic() > deadline:
                            log.seek(0)
                            raise RuntimeError(f"segmentd did not start: {log.read().decode(errors='replace')}")
                        time.sleep(0.05)
                yield LocalServer(client, port, proc, data)
            finally:
                client.close()
                if proc.poll() is None:
                    proc.terminate()
                    proc.wait(timeout=30)
