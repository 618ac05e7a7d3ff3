"""If, Loop and Scan (ops/control_flow.py) against onnx's reference, jitted and eager, and the
lowering each one gets (Python at trace time, lax.cond, lax.scan or lax.while_loop)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import onnx
import onnx.helper as oh
import pytest
from onnx import TensorProto as T
from onnx.reference import ReferenceEvaluator

import onnx2jax
from onnx2jax._errors import NodeError, StaticValueError

rng = np.random.default_rng(0)
F, I64, B = T.FLOAT, T.INT64, T.BOOL


def f32(*shape):
    return rng.standard_normal(shape).astype(np.float32)


# -- helpers (test_ops_sequence.py uses them too) ------------------------------------------------


def vi(name: str, elem: int = F, shape: Sequence[Any] | None = None) -> onnx.ValueInfoProto:
    return oh.make_tensor_value_info(name, elem, shape)


def seq_vi(name: str, elem: int = F, shape: Sequence[Any] | None = None) -> onnx.ValueInfoProto:
    return oh.make_tensor_sequence_value_info(name, elem, shape)


def any_vi(name: str) -> onnx.ValueInfoProto:
    """An output of unspecified type (the reference infers it)."""
    return oh.make_value_info(name, onnx.TypeProto())


def make_model(nodes, inputs, outputs, *, opset: int = 18, inits=(), name="g") -> onnx.ModelProto:
    inits = [onnx.numpy_helper.from_array(np.asarray(v), k) for k, v in dict(inits).items()]
    graph = oh.make_graph(nodes, name, inputs, outputs, inits)
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)])


def _compare(exp: Any, got: Any, where: str, rtol: float, atol: float, x64: bool) -> None:
    if exp is None:
        assert got is None, f"{where}: got {type(got).__name__}, expected an empty optional"
        return
    if isinstance(exp, list):
        assert isinstance(got, list), f"{where}: got {type(got).__name__}, expected a sequence"
        assert len(got) == len(exp), f"{where}: sequence of {len(got)}, expected {len(exp)}"
        for j, (e, g) in enumerate(zip(exp, got, strict=True)):
            _compare(e, g, f"{where}[{j}]", rtol, atol, x64)
        return
    exp, got = np.asarray(exp), np.asarray(got)
    assert got.shape == exp.shape, f"{where}: shape {got.shape} != expected {exp.shape}"
    if x64 or exp.dtype.itemsize < 8:
        assert got.dtype == exp.dtype, f"{where}: dtype {got.dtype} != expected {exp.dtype}"
    np.testing.assert_allclose(
        got.astype(np.float64), exp.astype(np.float64), rtol=rtol, atol=atol, err_msg=where
    )


def check_model(
    model: onnx.ModelProto,
    feeds: Mapping[str, Any],
    *,
    x64: bool = False,
    expected: Sequence[Any] | None = None,
    reference: str = "onnx",
    rtol: float = 1e-5,
    atol: float = 1e-6,
):
    """Run ``model`` jitted and eagerly through onnx2jax and compare with a reference.

    Returns the loaded model and the jitted outputs.
    """
    if expected is None:
        if reference == "onnx":
            expected = ReferenceEvaluator(model).run(None, dict(feeds))
        else:
            import onnxruntime as ort

            sess = ort.InferenceSession(
                model.SerializeToString(), providers=["CPUExecutionProvider"]
            )
            expected = sess.run(None, dict(feeds))
    m = onnx2jax.load(model, x64=x64)
    jitted = m(**feeds)
    eager = m.apply(m.params, **feeds)
    assert len(jitted) == len(expected)
    for i, (exp, got_j, got_e) in enumerate(zip(expected, jitted, eager, strict=True)):
        _compare(exp, got_j, f"output {i} (jit)", rtol, atol, x64)
        _compare(exp, got_e, f"output {i} (eager)", rtol, atol, x64)
    return m, jitted


def jaxpr_of(m, feeds: Mapping[str, Any]) -> str:
    """The jaxpr of the whole model (all inputs traced), to check which lowering was used."""
    return str(jax.make_jaxpr(lambda p, f: m.apply(p, **f))(m.params, dict(feeds)))


# -- If -------------------------------------------------------------------------------------


def _if_model(*, cond_const: bool | None, same_shapes: bool = True, opset: int = 18):
    """out = If(c): then x*2 (reads the outer x), else x+y (or x[0], a different shape)."""
    then_g = oh.make_graph(
        [
            oh.make_node(
                "Constant", [], ["two"], value=onnx.numpy_helper.from_array(np.float32(2.0))
            ),
            oh.make_node("Mul", ["x", "two"], ["t"]),
        ],
        "then",
        [],
        [any_vi("t")],
    )
    if same_shapes:
        else_nodes = [oh.make_node("Add", ["x", "y"], ["e"])]
    else:
        else_nodes = [oh.make_node("ReduceSum", ["x"], ["e"], keepdims=0)]
    else_g = oh.make_graph(else_nodes, "else", [], [any_vi("e")])
    node = oh.make_node("If", ["c"], ["out"], then_branch=then_g, else_branch=else_g)
    inputs = [vi("x", F, [3, 4]), vi("y", F, [3, 4])]
    inits = {}
    if cond_const is None:
        inputs.append(vi("c", B, []))
    else:
        inits["c"] = np.array(cond_const)
    return make_model([node], inputs, [any_vi("out")], opset=opset, inits=inits)


@pytest.mark.parametrize("cond", [True, False])
@pytest.mark.parametrize("opset", [11, 13, 18])
def test_if_static_condition_runs_only_the_taken_branch(cond, opset):
    # The branches differ in shape: fine when the condition is known at trace time.
    model = _if_model(cond_const=cond, same_shapes=False, opset=opset)
    feeds = {"x": f32(3, 4), "y": f32(3, 4)}
    m, (out,) = check_model(model, feeds)
    assert out.shape == ((3, 4) if cond else ())
    assert "cond[" not in jaxpr_of(m, feeds)


@pytest.mark.parametrize("cond", [True, False])
def test_if_runtime_condition_is_lax_cond(cond):
    model = _if_model(cond_const=None)
    feeds = {"x": f32(3, 4), "y": f32(3, 4), "c": np.array(cond)}
    m, _ = check_model(model, feeds)
    assert "cond[" in jaxpr_of(m, feeds)


def test_if_runtime_condition_of_shape_one():
    model = _if_model(cond_const=None)
    model.graph.input[2].CopyFrom(vi("c", B, [1]))
    for c in (True, False):
        check_model(model, {"x": f32(3, 4), "y": f32(3, 4), "c": np.array([c])})


def test_if_runtime_condition_with_different_branch_shapes_is_a_clear_error():
    model = _if_model(cond_const=None, same_shapes=False)
    m = onnx2jax.load(model)
    with pytest.raises(
        NodeError, match=r"If.*branches' shapes differ.*float32\[3, 4\].*float32\[\]"
    ):
        m(x=f32(3, 4), y=f32(3, 4), c=np.array(True))
    # Eagerly, the condition is a concrete value: only the taken branch runs.
    (out,) = m.apply(m.params, x=np.ones((3, 4), np.float32), y=f32(3, 4), c=np.array(False))
    assert float(out) == 12.0


def test_if_with_sequence_branches_and_runtime_condition():
    def branch(name, value):
        return oh.make_graph(
            [
                oh.make_node(
                    "Constant",
                    [],
                    ["k" + name],
                    value=onnx.numpy_helper.from_array(np.asarray(value, np.float32)),
                ),
                oh.make_node("Mul", ["x", "k" + name], ["p" + name]),
                oh.make_node("SequenceConstruct", ["p" + name, "x"], ["s" + name]),
            ],
            name,
            [],
            [seq_vi("s" + name)],
        )

    node = oh.make_node(
        "If", ["c"], ["s"], then_branch=branch("t", 2.0), else_branch=branch("e", -1.0)
    )
    model = make_model([node], [vi("x", F, [2]), vi("c", B, [])], [seq_vi("s")])
    for c in (True, False):
        check_model(model, {"x": f32(2), "c": np.array(c)})


# -- Loop -----------------------------------------------------------------------------------


def _loop_body_accumulate(*, with_scan: bool = True, cond_out: str = "cond_in"):
    """acc_out = acc_in * 0.5 + x (x from the outer scope) + i; scan output acc_out."""
    nodes = [
        oh.make_node("Identity", [cond_out], ["cond_out"]) if cond_out == "cond_in" else None,
        oh.make_node("Constant", [], ["half"], value=onnx.numpy_helper.from_array(np.float32(0.5))),
        oh.make_node("Mul", ["acc_in", "half"], ["h"]),
        oh.make_node("Add", ["h", "x"], ["hx"]),
        oh.make_node("Cast", ["i"], ["fi"], to=F),
        oh.make_node("Add", ["hx", "fi"], ["acc_out"]),
    ]
    outs = [vi("cond_out", B, []), vi("acc_out", F, [3])]
    if with_scan:
        nodes.append(oh.make_node("Identity", ["acc_out"], ["scan_out"]))
        outs.append(vi("scan_out", F, [3]))
    return [n for n in nodes if n is not None], outs


def _loop_model(
    *,
    M=None,
    cond=None,
    with_scan=True,
    M_input=False,
    cond_input=False,
    extra_nodes=(),
    cond_out="cond_in",
    opset=18,
):
    body_nodes, body_outs = _loop_body_accumulate(with_scan=with_scan, cond_out=cond_out)
    body_nodes = body_nodes + list(extra_nodes)
    body = oh.make_graph(
        body_nodes,
        "body",
        [vi("i", I64, []), vi("cond_in", B, []), vi("acc_in", F, [3])],
        body_outs,
    )
    outs = ["acc"] + (["scans"] if with_scan else [])
    node = oh.make_node(
        "Loop",
        [
            "M" if (M is not None or M_input) else "",
            "cond" if (cond is not None or cond_input) else "",
            "acc0",
        ],
        outs,
        body=body,
    )
    inputs = [vi("x", F, [3]), vi("acc0", F, [3])]
    inits = {}
    if M_input:
        inputs.append(vi("M", I64, []))
    elif M is not None:
        inits["M"] = np.array(M, np.int64)
    if cond_input:
        inputs.append(vi("cond", B, []))
    elif cond is not None:
        inits["cond"] = np.array(cond)
    return make_model([node], inputs, [any_vi(o) for o in outs], opset=opset, inits=inits)


@pytest.mark.parametrize("opset", [11, 13, 16, 19, 21])
@pytest.mark.parametrize("cond", [None, True])
def test_loop_static_trip_count_is_lax_scan(cond, opset):
    model = _loop_model(M=5, cond=cond, opset=opset)
    feeds = {"x": f32(3), "acc0": f32(3)}
    # onnx's reference runs no iteration when the condition is absent; onnxruntime is right.
    m, (acc, scans) = check_model(
        model, feeds, reference="onnx" if cond is not None else "onnxruntime"
    )
    assert scans.shape == (5, 3)
    text = jaxpr_of(m, feeds)
    assert "scan[" in text and "while[" not in text


def test_loop_trip_count_from_a_graph_input_is_value_specialised():
    model = _loop_model(M_input=True, cond=True)
    m = onnx2jax.load(model)
    assert m.value_inputs == {"M"}
    for n in (1, 4):
        feeds = {"x": f32(3), "acc0": f32(3), "M": np.array(n, np.int64)}
        check_model(model, feeds)


def test_loop_zero_iterations_gives_empty_scan_outputs():
    model = _loop_model(M=0, cond=True)
    feeds = {"x": f32(3), "acc0": f32(3)}
    # onnx's reference cannot stack zero iterations; onnxruntime gives [0, 3].
    _, (acc, scans) = check_model(model, feeds, reference="onnxruntime")
    assert scans.shape == (0, 3)
    model = _loop_model(M=3, cond=False)
    _, (acc, scans) = check_model(model, feeds, reference="onnxruntime")
    np.testing.assert_array_equal(acc, feeds["acc0"])
    assert scans.shape == (0, 3)


def _while_extra(threshold: float):
    """cond_out = ReduceSum(acc_out) < threshold (a runtime condition)."""
    return [
        oh.make_node("ReduceSum", ["acc_out"], ["total"], keepdims=0),
        oh.make_node(
            "Constant", [], ["thr"], value=onnx.numpy_helper.from_array(np.float32(threshold))
        ),
        oh.make_node("Less", ["total", "thr"], ["cond_out"]),
    ]


@pytest.mark.parametrize("M", [None, 100, 3])
def test_loop_runtime_condition_is_while_loop(M):
    model = _loop_model(
        M=M, cond=True, with_scan=False, extra_nodes=_while_extra(40.0), cond_out="computed"
    )
    feeds = {"x": np.ones(3, np.float32), "acc0": np.zeros(3, np.float32)}
    m, _ = check_model(model, feeds)
    assert "while[" in jaxpr_of(m, feeds)


def test_loop_runtime_initial_condition_is_while_loop():
    model = _loop_model(M=7, cond_input=True, with_scan=False)
    for c in (True, False):
        feeds = {"x": f32(3), "acc0": f32(3), "cond": np.array(c)}
        m, _ = check_model(model, feeds)
    assert "while[" in jaxpr_of(m, feeds)


def test_loop_runtime_condition_with_scan_outputs_is_a_graph_break():
    model = _loop_model(M=5, cond_input=True)
    m = onnx2jax.load(model)
    assert [b.kind for b in m.graph_breaks] == ["host"]
    feeds = {"x": f32(3), "acc0": f32(3), "cond": np.array(True)}
    # One jit cannot hold it; the model object runs the loop on concrete values between segments.
    with pytest.raises(StaticValueError, match=r"'Loop_0' \(Loop\) is a graph break"):
        jax.jit(m.apply)(m.params, **feeds)
    expected = ReferenceEvaluator(model).run(None, feeds)
    for got in (m(**feeds), m.apply(m.params, **feeds)):
        np.testing.assert_allclose(got[1], expected[1], rtol=1e-6)

    model = _loop_model(M=5, cond=True, extra_nodes=_while_extra(10.0), cond_out="computed")
    with pytest.raises(NodeError, match="no lowering of this Loop fits.*runtime data"):
        onnx2jax.load(model)(x=f32(3), acc0=f32(3))


def test_loop_carried_shape_change_under_runtime_condition_is_a_clear_error():
    body = oh.make_graph(
        [
            oh.make_node("Identity", ["c_in"], ["c_out"]),
            oh.make_node("Concat", ["v_in", "x"], ["v_out"], axis=0),
        ],
        "body",
        [vi("i", I64, []), vi("c_in", B, []), vi("v_in", F, None)],
        [vi("c_out", B, []), vi("v_out", F, None)],
    )
    node = oh.make_node("Loop", ["M", "c", "x"], ["v"], body=body)
    model = make_model(
        [node], [vi("x", F, [2]), vi("c", B, [])], [any_vi("v")], inits={"M": np.array(3, np.int64)}
    )
    m = onnx2jax.load(model)
    with pytest.raises(
        NodeError, match=r"Loop.*while_loop.*change: \[float32\[2\]\] -> \[float32\[4\]\]"
    ):
        m(x=f32(2), c=np.array(True))
    # With a constant condition the loop is unrolled at trace time, so the shape may grow.
    model.graph.input.pop()
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.array(True), "c"))
    _, (v,) = check_model(model, {"x": f32(2)})
    assert v.shape == (8,)


def test_loop_body_slicing_by_the_iteration_number_is_unrolled():
    # Like onnx's test_loop11, but with a constant condition: Slice needs static bounds.
    body = oh.make_graph(
        [
            oh.make_node("Identity", ["c_in"], ["c_out"]),
            oh.make_node("Unsqueeze", ["i", "zero"], ["start"]),
            oh.make_node("Add", ["start", "one"], ["end"]),
            oh.make_node("Slice", ["x", "start", "end"], ["piece"]),
            oh.make_node("Add", ["y_in", "piece"], ["y_out"]),
            oh.make_node("Identity", ["y_out"], ["scan_out"]),
        ],
        "body",
        [vi("i", I64, []), vi("c_in", B, []), vi("y_in", F, [1])],
        [vi("c_out", B, []), vi("y_out", F, [1]), vi("scan_out", F, [1])],
        [
            onnx.numpy_helper.from_array(np.array([0], np.int64), "zero"),
            onnx.numpy_helper.from_array(np.array([1], np.int64), "one"),
        ],
    )
    node = oh.make_node("Loop", ["M", "c", "y"], ["y_final", "ys"], body=body)
    model = make_model(
        [node],
        [vi("x", F, [5]), vi("y", F, [1])],
        [any_vi("y_final"), any_vi("ys")],
        inits={"M": np.array(5, np.int64), "c": np.array(True)},
    )
    feeds = {"x": f32(5), "y": f32(1)}
    m, (_, ys) = check_model(model, feeds)
    assert ys.shape == (5, 1)
    assert "scan[" not in jaxpr_of(m, feeds)


def test_loop_fully_static_is_folded_at_trace_time():
    # A loop on constants computes a shape (2*3*...), which then feeds Reshape: it must fold.
    body = oh.make_graph(
        [
            oh.make_node("Identity", ["c_in"], ["c_out"]),
            oh.make_node("Mul", ["p_in", "two"], ["p_out"]),
        ],
        "body",
        [vi("i", I64, []), vi("c_in", B, []), vi("p_in", I64, [])],
        [vi("c_out", B, []), vi("p_out", I64, [])],
        [onnx.numpy_helper.from_array(np.array(2, np.int64), "two")],
    )
    nodes = [
        oh.make_node("Loop", ["M", "c", "p0"], ["p"], body=body),  # p = 2**3 = 8
        oh.make_node("Unsqueeze", ["p", "zero"], ["shape"]),
        oh.make_node("Reshape", ["x", "shape"], ["y"]),
    ]
    model = make_model(
        nodes,
        [vi("x", F, [2, 4])],
        [any_vi("y")],
        inits={
            "M": np.array(3, np.int64),
            "p0": np.array(1, np.int64),
            "c": np.array(True),
            "zero": np.array([0], np.int64),
        },
    )
    _, (y,) = check_model(model, {"x": f32(2, 4)})
    assert y.shape == (8,)


def test_loop_builds_a_sequence():
    body = oh.make_graph(
        [
            oh.make_node("Identity", ["c_in"], ["c_out"]),
            oh.make_node("Cast", ["i"], ["fi"], to=F),
            oh.make_node("Mul", ["x", "fi"], ["xi"]),
            oh.make_node("SequenceInsert", ["s_in", "xi"], ["s_out"]),
        ],
        "body",
        [vi("i", I64, []), vi("c_in", B, []), seq_vi("s_in", F, [2])],
        [vi("c_out", B, []), seq_vi("s_out", F, [2])],
    )
    nodes = [
        oh.make_node("SequenceEmpty", [], ["s0"], dtype=F),
        oh.make_node("Loop", ["M", "c", "s0"], ["s"], body=body),
        oh.make_node("ConcatFromSequence", ["s"], ["cat"], axis=0, new_axis=1),
    ]
    model = make_model(
        nodes,
        [vi("x", F, [2])],
        [seq_vi("s", F, [2]), any_vi("cat")],
        inits={"M": np.array(4, np.int64), "c": np.array(True)},
    )
    _, (s, cat) = check_model(model, {"x": f32(2)})
    assert len(s) == 4 and cat.shape == (4, 2)


def test_loop_int64_iteration_number_with_x64():
    body = oh.make_graph(
        [
            oh.make_node("Identity", ["c_in"], ["c_out"]),
            oh.make_node("Add", ["s_in", "i"], ["s_out"]),
            oh.make_node("Mul", ["i", "i"], ["sq"]),
        ],
        "body",
        [vi("i", I64, []), vi("c_in", B, []), vi("s_in", I64, [])],
        [vi("c_out", B, []), vi("s_out", I64, []), vi("sq", I64, [])],
    )
    node = oh.make_node("Loop", ["M", "c", "s0"], ["s", "squares"], body=body)
    model = make_model(
        [node],
        [vi("s0", I64, [])],
        [any_vi("s"), any_vi("squares")],
        inits={"M": np.array(6, np.int64), "c": np.array(True)},
    )
    for x64 in (False, True):
        # onnx's reference vstacks scalar scan outputs to [6, 1]; onnxruntime stacks to [6].
        _, (s, sq) = check_model(
            model, {"s0": np.array(100, np.int64)}, x64=x64, reference="onnxruntime"
        )
        assert int(s) == 115 and sq.tolist() == [0, 1, 4, 9, 16, 25]


def test_loop_is_differentiable():
    model = _loop_model(M=4, cond=True)
    m = onnx2jax.load(model)
    x, acc0 = f32(3), f32(3)

    def loss(acc0):
        acc, scans = m.apply(m.params, x=x, acc0=acc0)
        return jnp.sum(acc) + jnp.sum(scans)

    # acc_k = 0.5**k * acc0 + ...: d/d acc0 of sum(acc_4) + sum_k sum(acc_k) = 0.5**4 + sum 0.5**k.
    g = jax.grad(loss)(acc0)
    np.testing.assert_allclose(g, np.full(3, 0.5**4 + 0.5 + 0.25 + 0.125 + 0.0625), rtol=1e-6)


# -- nested scopes --------------------------------------------------------------------------


def test_nested_if_in_scanned_loop_reads_both_scopes():
    """An If inside a lax.scan'd Loop body reads the outer graph's x and the body's acc_in."""
    then_g = oh.make_graph([oh.make_node("Add", ["acc_in", "x"], ["t"])], "then", [], [any_vi("t")])
    else_g = oh.make_graph([oh.make_node("Sub", ["acc_in", "x"], ["e"])], "else", [], [any_vi("e")])
    body = oh.make_graph(
        [
            oh.make_node("Identity", ["c_in"], ["c_out"]),
            oh.make_node("ReduceSum", ["acc_in"], ["tot"], keepdims=0),
            oh.make_node("Less", ["tot", "limit"], ["small"]),  # runtime condition -> lax.cond
            oh.make_node("If", ["small"], ["acc_out"], then_branch=then_g, else_branch=else_g),
            oh.make_node("Identity", ["acc_out"], ["scan_out"]),
        ],
        "body",
        [vi("i", I64, []), vi("c_in", B, []), vi("acc_in", F, [3])],
        [vi("c_out", B, []), vi("acc_out", F, [3]), vi("scan_out", F, [3])],
    )
    node = oh.make_node("Loop", ["M", "c", "acc0"], ["acc", "scans"], body=body)
    model = make_model(
        [node],
        [vi("x", F, [3]), vi("acc0", F, [3]), vi("limit", F, [])],
        [any_vi("acc"), any_vi("scans")],
        inits={"M": np.array(6, np.int64), "c": np.array(True)},
    )
    feeds = {"x": np.ones(3, np.float32), "acc0": np.zeros(3, np.float32), "limit": np.float32(7.0)}
    m, (acc, scans) = check_model(model, feeds)
    text = jaxpr_of(m, feeds)
    assert "scan[" in text and "cond[" in text


def test_nested_loop_in_loop_reads_outer_iteration_number():
    inner = oh.make_graph(
        [
            oh.make_node("Identity", ["ci"], ["co"]),
            oh.make_node("Cast", ["i_outer"], ["fo"], to=F),  # the outer body's iteration number
            oh.make_node("Cast", ["j"], ["fj"], to=F),
            oh.make_node("Mul", ["fo", "fj"], ["p"]),
            oh.make_node("Add", ["a_in", "p"], ["a_add"]),
            oh.make_node("Add", ["a_add", "x"], ["a_out"]),
        ],
        "inner",
        [vi("j", I64, []), vi("ci", B, []), vi("a_in", F, [2])],
        [vi("co", B, []), vi("a_out", F, [2])],
    )
    outer = oh.make_graph(
        [
            oh.make_node("Identity", ["c_in"], ["c_out"]),
            oh.make_node("Loop", ["three", "c_in", "acc_in"], ["acc_out"], body=inner),
        ],
        "outer",
        [vi("i_outer", I64, []), vi("c_in", B, []), vi("acc_in", F, [2])],
        [vi("c_out", B, []), vi("acc_out", F, [2])],
        [onnx.numpy_helper.from_array(np.array(3, np.int64), "three")],
    )
    node = oh.make_node("Loop", ["M", "c", "acc0"], ["acc"], body=outer)
    model = make_model(
        [node],
        [vi("x", F, [2]), vi("acc0", F, [2])],
        [any_vi("acc")],
        inits={"M": np.array(4, np.int64), "c": np.array(True)},
    )
    check_model(model, {"x": f32(2), "acc0": f32(2)})


# -- Scan -----------------------------------------------------------------------------------


def _scan_body(outer_scale: bool = False):
    """state += x_t (* scale from the outer scope); scan output: state * 2."""
    nodes = [
        oh.make_node("Add", ["s_in", "xs"], ["s_out"]),
        oh.make_node("Mul", ["s_out", "k"], ["y"]),
    ]
    inits = []
    if not outer_scale:
        inits = [onnx.numpy_helper.from_array(np.float32(2.0), "k")]
    return oh.make_graph(
        nodes,
        "body",
        [vi("s_in", F, [4]), vi("xs", F, [4])],
        [vi("s_out", F, [4]), vi("y", F, [4])],
        inits,
    )


@pytest.mark.parametrize(
    "in_axis,in_dir,out_axis,out_dir",
    [
        (0, 0, 0, 0),
        (1, 0, 0, 0),
        (0, 1, 0, 0),
        (0, 0, 1, 0),
        (0, 0, 0, 1),
        (-1, 1, -1, 1),
    ],
)
def test_scan9_axes_and_directions(in_axis, in_dir, out_axis, out_dir):
    x = f32(5, 4) if in_axis == 0 else f32(4, 5)
    node = oh.make_node(
        "Scan",
        ["s0", "x"],
        ["s", "ys"],
        body=_scan_body(),
        num_scan_inputs=1,
        scan_input_axes=[in_axis],
        scan_input_directions=[in_dir],
        scan_output_axes=[out_axis],
        scan_output_directions=[out_dir],
    )
    model = make_model(
        [node], [vi("s0", F, [4]), vi("x", F, list(x.shape))], [any_vi("s"), any_vi("ys")]
    )
    feeds = {"s0": f32(4), "x": x}
    # onnx's reference supports neither other axes nor reverse directions.
    m, (_, ys) = check_model(model, feeds, reference="onnxruntime")
    assert ys.shape == ((5, 4) if out_axis == 0 else (4, 5))
    assert "scan[" in jaxpr_of(m, feeds)


def test_scan9_body_reads_outer_scope():
    node = oh.make_node(
        "Scan", ["s0", "x"], ["s", "ys"], body=_scan_body(outer_scale=True), num_scan_inputs=1
    )
    model = make_model(
        [node],
        [vi("s0", F, [4]), vi("x", F, [6, 4]), vi("k", F, [])],
        [any_vi("s"), any_vi("ys")],
        opset=11,
    )
    check_model(model, {"s0": f32(4), "x": f32(6, 4), "k": np.float32(-1.5)})


def test_scan9_two_inputs_two_states():
    body = oh.make_graph(
        [
            oh.make_node("Add", ["a_in", "u"], ["a_out"]),
            oh.make_node("Mul", ["b_in", "v"], ["b_out"]),
            oh.make_node("Sub", ["a_out", "b_out"], ["d"]),
        ],
        "body",
        [vi("a_in", F, [2]), vi("b_in", F, [2]), vi("u", F, [2]), vi("v", F, [2])],
        [vi("a_out", F, [2]), vi("b_out", F, [2]), vi("d", F, [2])],
    )
    node = oh.make_node(
        "Scan",
        ["a0", "b0", "u", "v"],
        ["a", "b", "d"],
        body=body,
        num_scan_inputs=2,
        scan_input_directions=[0, 1],
    )
    model = make_model(
        [node],
        [vi("a0", F, [2]), vi("b0", F, [2]), vi("u", F, [3, 2]), vi("v", F, [3, 2])],
        [any_vi("a"), any_vi("b"), any_vi("d")],
        opset=16,
    )
    check_model(
        model, {"a0": f32(2), "b0": f32(2), "u": f32(3, 2), "v": f32(3, 2)}, reference="onnxruntime"
    )


def test_scan8_batch_axis_and_directions():
    node = oh.make_node(
        "Scan", ["", "s0", "x"], ["s", "ys"], body=_scan_body(), num_scan_inputs=1, directions=[1]
    )
    model = make_model(
        [node], [vi("s0", F, [2, 4]), vi("x", F, [2, 5, 4])], [any_vi("s"), any_vi("ys")], opset=8
    )
    _, (s, ys) = check_model(model, {"s0": f32(2, 4), "x": f32(2, 5, 4)}, reference="onnxruntime")
    assert s.shape == (2, 4) and ys.shape == (2, 5, 4)


def test_scan8_sequence_lens_shorter_than_the_sequence_is_refused():
    node = oh.make_node(
        "Scan", ["lens", "s0", "x"], ["s", "ys"], body=_scan_body(), num_scan_inputs=1
    )
    model = make_model(
        [node],
        [vi("s0", F, [2, 4]), vi("x", F, [2, 5, 4])],
        [any_vi("s"), any_vi("ys")],
        opset=8,
        inits={"lens": np.array([5, 3], np.int32)},
    )
    with pytest.raises(NodeError, match="sequence_lens"):
        onnx2jax.load(model)(s0=f32(2, 4), x=f32(2, 5, 4))


def test_scan_on_static_inputs_folds():
    # Scan over a constant whose result is a Reshape shape: it must be computed at trace time.
    body = oh.make_graph(
        [oh.make_node("Add", ["s_in", "t"], ["s_out"])],
        "body",
        [vi("s_in", I64, [1]), vi("t", I64, [1])],
        [vi("s_out", I64, [1])],
    )
    nodes = [
        oh.make_node("Scan", ["s0", "parts"], ["n"], body=body, num_scan_inputs=1),
        oh.make_node("Reshape", ["x", "n"], ["y"]),
    ]
    model = make_model(
        nodes,
        [vi("x", F, [2, 3])],
        [any_vi("y")],
        inits={"s0": np.array([0], np.int64), "parts": np.array([[1], [2], [3]], np.int64)},
    )
    _, (y,) = check_model(model, {"x": f32(2, 3)})
    assert y.shape == (6,)


def test_static_input_error_inside_while_loop_names_the_loop():
    model = _loop_model(M=3, cond_input=True, with_scan=False)
    body = model.graph.node[0].attribute[0].g
    # Reshape acc_in to a shape computed from the (traced, under while_loop) iteration number.
    body.node.extend(
        [
            oh.make_node("Add", ["i", "i"], ["two_i"]),
            oh.make_node("Unsqueeze", ["two_i", "z"], ["shape"]),
            oh.make_node("Reshape", ["acc_in", "shape"], ["r"]),
        ]
    )
    body.initializer.append(onnx.numpy_helper.from_array(np.array([0], np.int64), "z"))
    # Nothing reads the Reshape: the graph as written (the cleanup pass would drop it).
    m = onnx2jax.load(model, passes=None)
    # A runtime condition makes it a graph break (no jax loop gives the body a static i); the
    # model object runs it on the host, and tracing it whole names the loop.
    assert [(b.node, b.kind) for b in m.graph_breaks] == [("Loop_0", "host")]
    with pytest.raises(StaticValueError, match=r"'Loop_0' \(Loop\) is a graph break"):
        jax.jit(m.apply)(m.params, x=f32(3), acc0=f32(3), cond=np.array(True))
