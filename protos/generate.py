"""Generate the Python gRPC modules from protos/*.proto.

Used by `make proto` and by the package build (setup.py), so a `pip install .`
from a clean checkout ships working modules without committing generated code.
"""

from __future__ import annotations

import sys
from pathlib import Path

PROTOS_DIR = Path(__file__).resolve().parent
ROOT = PROTOS_DIR.parent


def generate(root: Path = ROOT) -> list[Path]:
    """Run protoc for every .proto under protos/ into protos/; return the outputs."""
    import grpc_tools
    from grpc_tools import protoc  # build-time dependency only

    well_known = Path(grpc_tools.__file__).parent / "_proto"
    sources = sorted((root / "protos").glob("*.proto"))
    outputs: list[Path] = []
    for source in sources:
        relative = source.relative_to(root)
        args = [
            "protoc",
            f"-I{root}",
            f"-I{well_known}",
            f"--python_out={root}",
            f"--pyi_out={root}",
            f"--grpc_python_out={root}",
            str(relative),
        ]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed for {relative}")
        stem = source.with_suffix("")
        outputs += [Path(f"{stem}_pb2.py"), Path(f"{stem}_pb2.pyi"), Path(f"{stem}_pb2_grpc.py")]
    return outputs


if __name__ == "__main__":
    import os

    os.chdir(ROOT)
    for path in generate():
        print(path.relative_to(ROOT))
    sys.exit(0)
