"""Generates the gRPC stubs from segmentd's proto/ (two directories up) with grpcio-tools
before the package is built, so they always match the server's contract."""

import pathlib
import shutil
import sys

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = pathlib.Path(__file__).resolve().parent
PROTO_ROOT = HERE.parent.parent / "proto"
OUT = HERE / "src"


def generate() -> None:
    from grpc_tools import protoc  # build requirement
    import grpc_tools

    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / "segmentd" / "v1").glob("*.proto"))
    if not protos:
        raise SystemExit(f"no .proto files under {PROTO_ROOT}/segmentd/v1: build from a segmentd checkout")
    well_known = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    # mypy-protobuf's plugins (build requirements), beside the running interpreter or on PATH:
    # typed stubs for the messages and for the service stubs, which pass `mypy --strict`.
    plugins = []
    for name in ("protoc-gen-mypy", "protoc-gen-mypy_grpc"):
        beside = pathlib.Path(sys.executable).parent / name
        found = str(beside) if beside.exists() else shutil.which(name)
        if found is None:
            raise SystemExit(f"{name} not found: install mypy-protobuf (a build requirement)")
        plugins.append(f"--plugin={name}={found}")
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        *plugins,
        f"--python_out={OUT}",
        f"--mypy_out={OUT}",
        f"--grpc_python_out={OUT}",
        f"--mypy_grpc_out={OUT}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("grpc_tools.protoc failed")
    (OUT / "segmentd" / "v1" / "__init__.py").write_text('"""Generated from segmentd\'s proto/segmentd/v1."""\n')


class BuildWithStubs(build_py):
    def run(self):
        generate()
        # Pick up the generated subpackage, found after setuptools listed the packages.
        if "segmentd.v1" not in self.packages:
            self.packages.append("segmentd.v1")
        super().run()


setup(cmdclass={"build_py": BuildWithStubs})
