"""The layer rules of docs/ARCHITECTURE.md, checked on the import statements of the source."""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).parents[1]


def _imports(path: pathlib.Path) -> set[str]:
    """Absolute module names a file imports (relative imports resolved against onnx2jax)."""
    tree = ast.parse(path.read_text())
    package = "onnx2jax.passes" if path.parent.name == "passes" else "onnx2jax"
    if path.parent.name == "ops":
        package = "onnx2jax.ops"
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
                names.add(mod)
                names.update(f"{mod}.{a.name}" for a in node.names)
            else:
                names.add(node.module or "")
    return names


def _violations(folder: str, forbidden: tuple[str, ...]) -> list[str]:
    bad = []
    for path in sorted((ROOT / folder).glob("*.py")):
        for name in _imports(path):
            if any(name == f or name.startswith(f + ".") for f in forbidden):
                bad.append(f"{path.relative_to(ROOT)} imports {name}")
    return bad


def test_ops_never_import_the_api_passes_or_tracer():
    assert not _violations(
        "onnx2jax/ops", ("onnx2jax._api", "onnx2jax.passes", "onnx2jax._tracer", "onnx")
    )


def test_passes_never_import_jax_or_the_runtime():
    assert not _violations(
        "passes", ("jax", "jaxlib", "onnx2jax._api", "onnx2jax._tracer", "onnx2jax.ops")
    )


def test_only_the_loader_reads_protobuf():
    bad = []
    for path in sorted((ROOT / "onnx2jax").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if (
            rel
            in (
                "onnx2jax/_loader.py",
                "onnx2jax/backend.py",
                "onnx2jax/cli.py",
                "onnx2jax/_dtypes.py",
            )
            or "bench" in rel
        ):
            # the loader; the conformance backend and CLI/bench hand protos around; _dtypes
            # reads onnx's table of element type codes
            continue
        names = _imports(path)
        if any(n == "onnx" or n.startswith("onnx.") and n != "onnx.defs" for n in names):
            bad.append(rel)
    assert not bad, f"protobuf used outside the loader: {bad}"
