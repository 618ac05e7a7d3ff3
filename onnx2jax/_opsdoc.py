"""Renders docs/ops.md from the registry, so the op list can never drift from the code."""

from __future__ import annotations

import inspect


def render() -> str:
    """The markdown table of every registered op, its version ranges and notes."""
    from . import ops  # noqa: F401  (registers every op)
    from ._registry import registered

    rows = []
    for (domain, op_type), impls in sorted(
        registered().items(), key=lambda kv: (kv[0][0], kv[0][1].lower())
    ):
        if domain.startswith("test."):
            continue
        sinces = [i.since for i in impls]
        ranges = [f"{a}-{b - 1}" if b - 1 > a else f"{a}" for a, b in zip(sinces, sinces[1:])]
        ranges.append(f"{sinces[-1]}+")
        doc = inspect.getdoc(impls[-1].fn) or ""
        note = doc.splitlines()[0] if doc else ""
        rows.append(f"| {domain or 'ai.onnx'} | {op_type} | {', '.join(ranges)} | {note} |")
    header = [
        "# Supported operators",
        "",
        "Generated from the registry by `python -m onnx2jax._opsdoc > docs/ops.md`; a test checks",
        "that this file matches the code. Version ranges are the opset versions each implementation",
        "serves (`13+` also covers newer opsets whose schema did not change the op).",
        "",
        f"{len(rows)} operators.",
        "",
        "| domain | op | opsets | notes |",
        "|---|---|---|---|",
    ]
    return "\n".join(header + rows) + "\n"


if __name__ == "__main__":
    print(render(), end="")
