"""Why a conformance case failed, as one short cause string (shared by the suites and the tool).

The expectations modules (``node_expectations.py``, ``model_expectations.py``) state a cause per
listed case; the suites check that a listed case still fails *for that cause* (so a new failure
in a listed case is caught), and ``tests/tools/update_expectations.py`` drafts the lists with the
same function.
"""

from __future__ import annotations

import re
import traceback
from typing import Any

# Causes that are one group whatever the op, with the explanation shown in the group's header.
FAMILIES = {
    "data-dependent output shape": "Data-dependent output shapes (graph break: the output shape "
    "depends on input values, which one jax.jit cannot express)",
    "control flow on runtime data": "Control flow decided by runtime data (a Loop's trip count "
    "or the If branch taken changes shapes or types, which one jax.jit cannot express)",
    "strings": "Strings (JAX has no string dtype: string tensors cannot be jit arguments or results)",
    "random values": "Random ops (values cannot reproduce numpy's generator)",
    "timeout": "Timeouts (ran longer than the per-case limit)",
    "crash": "Crashes (the worker process died)",
}

RANDOM_OPS = {
    "Bernoulli",
    "RandomNormal",
    "RandomNormalLike",
    "RandomUniform",
    "RandomUniformLike",
    "Multinomial",
}
# Ops whose training-mode outputs are random draws (compared as "random values" when wrong).
_RANDOM_IN_TRAINING = {"Dropout"}
_OP_IN_MESSAGE = re.compile(r"\(([\w.]+)::(\w+)\)")
_UNSUPPORTED = re.compile(
    r"^([\w.]+)::(\w+) \(opset \d+\)(.*?)(: attribute\(s\) (.*) not supported)?$"
)
_EXC_IN_NODE_ERROR = re.compile(r"failed on inputs .*?\): (\w+(?:\.\w+)*):")


def ops_of(model) -> list[str]:
    return [n.op_type for n in model.graph.node]


def has_strings(model) -> bool:
    import onnx

    for vi in list(model.graph.input) + list(model.graph.output):
        t = vi.type
        while True:
            which = t.WhichOneof("value")
            if which == "sequence_type":
                t = t.sequence_type.elem_type
            elif which == "optional_type":
                t = t.optional_type.elem_type
            else:
                break
        if which == "tensor_type" and t.tensor_type.elem_type == onnx.TensorProto.STRING:
            return True
    return False


def cause_of(model: Any, exc: BaseException) -> tuple[str, str, str]:
    """``(cause, op, detail)`` for a case whose ``model`` raised ``exc`` when run and checked."""
    from onnx2jax import (
        InputError,
        ModelLoadError,
        NodeError,
        StaticValueError,
        UnsupportedOpsError,
    )
    from onnx2jax._analysis import DATA_DEPENDENT_SHAPE_OPS

    ops = ops_of(model)
    main_op = ops[0] if len(set(ops)) == 1 else ""
    if isinstance(exc, UnsupportedOpsError):
        missing = []
        for m in exc.missing:
            hit = _UNSUPPORTED.match(m)
            if hit and hit.group(4):
                missing.append(f"{hit.group(2)} attribute(s) {hit.group(5)}")
            elif hit:
                missing.append(hit.group(2))
            else:
                missing.append(m)
        missing = sorted(set(missing))
        op = missing[0].split()[0]
        cause, detail = f"not implemented: {', '.join(missing)}", str(exc).splitlines()[1].strip()
    elif isinstance(exc, StaticValueError):
        hit = _OP_IN_MESSAGE.search(str(exc))
        op = hit.group(2) if hit else main_op
        cause, detail = f"{op}: shape input is runtime data (StaticValueError)", str(exc)
    elif isinstance(exc, NodeError):
        msg = str(exc)
        hit, inner = _OP_IN_MESSAGE.search(msg), _EXC_IN_NODE_ERROR.search(msg)
        op = hit.group(2) if hit else main_op
        cause, detail = f"{op} raises {inner.group(1) if inner else 'NodeError'}", msg
    elif isinstance(exc, InputError):
        op, cause, detail = main_op, "inputs refused (InputError)", str(exc)
    elif isinstance(exc, ModelLoadError):
        op, cause, detail = main_op, f"load error ({type(exc).__name__})", str(exc)
    elif isinstance(exc, AssertionError):
        msg = str(exc).strip()
        op = main_op
        if ": dtype " in msg:
            cause = f"wrong dtype: {main_op or 'graph'}"
        elif ": shape " in msg or "sequence of" in msg or "outputs, expected" in msg:
            cause = f"wrong shape: {main_op or 'graph'}"
        else:
            cause = f"wrong values: {main_op or 'graph'}"
        detail = msg
    else:  # raised outside any node: jit argument handling, output conversion
        op = main_op
        cause = f"{type(exc).__name__} outside the ops"
        detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    # Structural causes take precedence over the symptom.
    if has_strings(model) and not cause.startswith("not implemented"):
        cause = "strings"
    elif set(ops) & DATA_DEPENDENT_SHAPE_OPS:
        op = sorted(set(ops) & DATA_DEPENDENT_SHAPE_OPS)[0]
        cause = f"data-dependent output shape: {op}"
    elif op in ("If", "Loop", "Scan") and "depends on runtime data" in detail:
        cause = f"control flow on runtime data: {op}"
    elif set(ops) & (RANDOM_OPS | _RANDOM_IN_TRAINING) and cause.startswith("wrong values"):
        cause = "random values"
    return cause, op, " ".join(detail.split())[:300]


def family(cause: str) -> str:
    """The part of a cause before its first ':' ("wrong values", "not implemented", ...)."""
    return cause.split(":")[0].strip()


def check_listed_failure(model: Any, exc: BaseException, reason: str) -> str:
    """Raise AssertionError unless ``exc`` is the failure that ``reason`` lists; return the cause.

    The families must agree, and a "not implemented" entry must name the same ops: a listed
    random-values case that now raises a NodeError, or a case listed as not implemented that
    now fails with wrong values, fails the suite instead of counting as expected.
    """
    cause, _, detail = cause_of(model, exc)
    same = family(cause) == family(reason)
    if same and family(cause) == "not implemented":
        same = cause == reason
    assert same, (
        f"listed as {reason!r}, but now fails with {cause!r}: {detail}\n"
        "Fix the regression, or update the entry in the expectations module if the cause "
        "really changed."
    )
    return cause
