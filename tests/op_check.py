"""Checks one ONNX node against onnx's ReferenceEvaluator (or onnxruntime), jitted and eager."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
import onnx.helper as oh
from onnx.reference import ReferenceEvaluator

import onnx2jax
from onnx2jax._dtypes import to_onnx_dtype

# (rtol, atol) between eager and jitted results, by dtype: about two ulps at 1.0.
_EAGER_TOL = {"float16": (2e-3, 2e-3), "bfloat16": (1.6e-2, 1.6e-2)}


def node_model(
    op_type: str,
    inputs: Mapping[str, np.ndarray | None],
    attrs: Mapping[str, Any] | None = None,
    *,
    n_outputs: int = 1,
    opset: int | None = None,
    domain: str = "",
    constants: Sequence[str] = (),
) -> onnx.ModelProto:
    """A one-node model. Inputs named in ``constants`` become initializers (known at trace time);
    a ``None`` input is an absent optional input."""
    names = [n if v is not None else "" for n, v in inputs.items()]
    outs = [f"out{i}" for i in range(n_outputs)]
    node = oh.make_node(op_type, names, outs, domain=domain or None, **(attrs or {}))
    graph_inputs, inits = [], []
    for n, v in inputs.items():
        if v is None:
            continue
        v = np.asarray(v)
        if n in constants:
            inits.append(onnx.numpy_helper.from_array(v, n))
        else:
            graph_inputs.append(oh.make_tensor_value_info(n, to_onnx_dtype(v.dtype), v.shape))
    graph = oh.make_graph(
        [node], "g", graph_inputs, [oh.make_value_info(o, onnx.TypeProto()) for o in outs], inits
    )
    opset = opset or onnx.defs.onnx_opset_version()
    imports = [oh.make_opsetid("", opset)]
    if domain:
        imports.append(oh.make_opsetid(domain, 1))
    return oh.make_model(graph, opset_imports=imports)


def check_node(
    op_type: str,
    inputs: Mapping[str, np.ndarray | None],
    attrs: Mapping[str, Any] | None = None,
    *,
    n_outputs: int = 1,
    opset: int | None = None,
    domain: str = "",
    constants: Sequence[str] = (),
    reference: str = "onnx",
    rtol: float = 1e-5,
    atol: float = 1e-6,
    x64: bool = False,
) -> list[np.ndarray]:
    """Run the node through onnx2jax (jitted and eager) and a reference; assert they agree.

    Returns the onnx2jax outputs. With ``x64=False`` (the default user setting) int64/float64
    results are compared by value, since JAX computes them in 32 bits.
    """
    model = node_model(
        op_type, inputs, attrs, n_outputs=n_outputs, opset=opset, domain=domain, constants=constants
    )
    feeds = {n: np.asarray(v) for n, v in inputs.items() if v is not None and n not in constants}
    if reference == "onnx":
        expected = ReferenceEvaluator(model).run(None, feeds)
    else:
        import onnxruntime as ort

        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        expected = sess.run(None, feeds)
    m = onnx2jax.load(model, x64=x64)
    jitted = m(**feeds)
    eager = m.apply(m.params, **feeds)
    for i, (exp, got_j, got_e) in enumerate(zip(expected, jitted, eager)):
        exp = np.asarray(exp)
        got_j, got_e = np.asarray(got_j), np.asarray(got_e)
        where = f"{op_type} output {i}"
        assert got_j.shape == exp.shape, f"{where}: shape {got_j.shape} != expected {exp.shape}"
        if x64 or exp.dtype.itemsize < 8:
            assert got_j.dtype == exp.dtype, f"{where}: dtype {got_j.dtype} != expected {exp.dtype}"
        if exp.dtype.kind in "fc" or exp.dtype.name == "bfloat16":
            np.testing.assert_allclose(
                got_j.astype(np.float64),
                exp.astype(np.float64),
                rtol=rtol,
                atol=atol,
                err_msg=where,
            )
            # Eager rounds every op's result to the dtype; the jitted program may keep a fused
            # chain in wider registers (or, on CPUs with AVX-512 FP16, not): two half-precision
            # ulps apart is agreement.
            tol = _EAGER_TOL.get(exp.dtype.name, (1e-5, 1e-6))
            np.testing.assert_allclose(
                got_e.astype(np.float64),
                got_j.astype(np.float64),
                rtol=tol[0],
                atol=tol[1],
                err_msg=f"{where}: eager differs from jit",
            )
        else:
            np.testing.assert_array_equal(got_j, exp, err_msg=where)
            np.testing.assert_array_equal(got_e, got_j, err_msg=f"{where}: eager differs from jit")
    return [np.asarray(o) for o in jitted]
