"""Regenerate the committed Python code of the contracts in proto/.

    python -m eco2.services.codegen          # rewrite proto/eco2/**/*_pb2*.py and .pyi
    python -m eco2.services.codegen --check  # exit 1 if the committed code is stale

Generated modules sit next to their .proto file, so `proto/eco2/chat/v1/chat.proto`
becomes the import `eco2.chat.v1.chat_pb2` (see docs/adr/0001-layout.md).
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from importlib import resources
from pathlib import Path

GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def repo_root() -> Path:
    """The checkout root (the folder holding buf.yaml)."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "buf.yaml").is_file() and (parent / "proto").is_dir():
            return parent
    raise SystemExit(f"codegen runs from a source checkout (buf.yaml not found above {here})")


def proto_files(proto_dir: Path) -> list[Path]:
    return sorted(p.relative_to(proto_dir) for p in proto_dir.rglob("*.proto"))


def generate(proto_dir: Path, out_dir: Path) -> list[Path]:
    """Run protoc over every .proto under proto_dir, writing into out_dir."""
    from grpc_tools import protoc  # dev dependency: only needed to regenerate

    well_known = str(resources.files("grpc_tools") / "_proto")
    files = [str(p) for p in proto_files(proto_dir)]
    args = [
        "grpc_tools.protoc",
        f"-I{proto_dir}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *files,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    # Every folder on the way to a generated module is a regular package, except `eco2` itself:
    # a namespace package that setup.py assembles from several folders (docs/adr/0001).
    generated: list[Path] = []
    for path in sorted(out_dir.rglob("*")):
        if path.is_file() and path.name.endswith(GENERATED_SUFFIXES):
            generated.append(path.relative_to(out_dir))
            for parent in path.relative_to(out_dir).parents:
                if len(parent.parts) > 1:
                    init = out_dir / parent / "__init__.py"
                    if not init.exists():
                        init.write_text("")
    return generated


def committed(proto_dir: Path) -> list[Path]:
    return sorted(
        p.relative_to(proto_dir) for p in proto_dir.rglob("*") if p.is_file() and p.name.endswith(GENERATED_SUFFIXES)
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="fail if the committed code is stale")
    args = parser.parse_args(argv)
    proto_dir = repo_root() / "proto"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        fresh = generate(proto_dir, out)
        if args.check:
            stale = sorted(
                {
                    str(p)
                    for p in fresh
                    if not (proto_dir / p).exists() or not filecmp.cmp(out / p, proto_dir / p, shallow=False)
                }
                | {str(p) for p in committed(proto_dir) if p not in set(fresh)}
            )
            if stale:
                print("generated code is stale; run `python -m eco2.services.codegen`:", *stale, sep="\n  ")
                return 1
            print(f"generated code is up to date ({len(fresh)} files)")
            return 0
        for old in committed(proto_dir):
            if old not in set(fresh):
                (proto_dir / old).unlink()
        for rel in fresh:
            (proto_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(out / rel, proto_dir / rel)
        for init in out.rglob("__init__.py"):
            target = proto_dir / init.relative_to(out)
            if not target.exists():
                target.write_text("")
        print(f"wrote {len(fresh)} generated files under {proto_dir}")
        return 0


if __name__ == "__main__":
    sys.exit(main())
