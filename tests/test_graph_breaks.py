"""Graph breaks (data-dependent output shapes): jitted segments with host steps, and the bounded mode."""

from __future__ import annotations

import jax
import numpy as np
import onnx
import onnx.helper as oh
import onnxruntime as ort
import pytest
from onnx import TensorProto as T
from onnx.reference import ReferenceEvaluator

import onnx2jax
from onnx2jax import Onnx2JaxError, StaticValueError
from onnx2jax._stages import staged
from onnx2jax.cli import main

rng = np.random.default_rng(0)


def _model(nodes, inputs, outputs, inits=(), opset=17) -> onnx.ModelProto:
    """A model from nodes; ``inputs`` maps name -> (elem type, shape); outputs are names."""
    graph = oh.make_graph(
        nodes,
        "g",
        [oh.make_tensor_value_info(n, t, s) for n, (t, s) in inputs.items()],
        [oh.make_value_info(o, onnx.TypeProto()) for o in outputs],
        [onnx.numpy_helper.from_array(np.asarray(v), k) for k, v in dict(inits).items()],
    )
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)])


def _check(model: onnx.ModelProto, feeds: dict, x64: bool = False, **load_kw) -> onnx2jax.Model:
    """onnx2jax (model object and eager apply) against onnx's reference and onnxruntime."""
    m = onnx2jax.load(model, x64=x64, **load_kw)
    ref = ReferenceEvaluator(model).run(None, feeds)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    ort_out = sess.run(None, feeds)
    for got in (m(**feeds), m.apply(m.params, **feeds)):
        assert len(got) == len(ref)
        for g, r, o in zip(got, ref, ort_out, strict=True):
            g = np.asarray(g)
            assert g.shape == r.shape == o.shape
            if x64:
                assert g.dtype == r.dtype
            np.testing.assert_allclose(g.astype(np.float64), r.astype(np.float64), rtol=1e-6)
            np.testing.assert_allclose(g.astype(np.float64), o.astype(np.float64), rtol=1e-6)
    return m


def _compiles(m: onnx2jax.Model) -> list[int]:
    """How often each jitted segment compiled, in order."""
    return [seg._cache_size() for seg in staged(m._program).segments]


def _kinds(m: onnx2jax.Model) -> list[str]:
    return ["host" if s.host else "jit" for s in m._program.stages]


def nonzero_gather() -> onnx.ModelProto:
    """r = relu(x); idx = NonZero(r)ᵀ; y = GatherND(x, idx); s = ReduceSum(y); r is an output too."""
    return _model(
        [
            oh.make_node("Relu", ["x"], ["r"], name="relu"),
            oh.make_node("NonZero", ["r"], ["nz"], name="nz"),
            oh.make_node("Transpose", ["nz"], ["idx"], name="t"),
            oh.make_node("GatherND", ["x", "idx"], ["y"], name="gather"),
            oh.make_node("Mul", ["y", "w"], ["yw"], name="mul"),
            oh.make_node("ReduceSum", ["yw"], ["s"], name="sum", keepdims=0),
        ],
        {"x": (T.FLOAT, [3, 4])},
        ["s", "y", "r", "idx"],
        {"w": np.float32(2.0)},
    )


def test_nonzero_on_computed_data_breaks_and_matches_the_references():
    x = rng.standard_normal((3, 4)).astype(np.float32)
    m = _check(nonzero_gather(), {"x": x})
    assert [(b.node, b.op_type, b.kind) for b in m.graph_breaks] == [("nz", "NonZero", "host")]
    assert "'r' decides output shapes" in str(m.graph_breaks[0])
    assert m.value_inputs == frozenset()  # x is not specialised on its value
    assert _kinds(m) == ["jit", "host", "jit"]
    # The segments carry exactly what later stages and the outputs need.
    first, host, last = m._program.stages
    assert first.outputs == ("r",) and host.inputs == ("r",) and host.outputs == ("nz",)
    assert set(last.inputs) == {"nz", "x"} and last.params == ("w",)
    assert set(last.outputs) == {"s", "y", "idx"}


def test_each_segment_compiles_once_per_shape():
    m = onnx2jax.load(nonzero_gather())
    x = np.array([[1, -1, 2, -2], [0, 3, -3, 4], [-5, 5, 6, -6]], np.float32)
    m(x)
    m(x * 2)  # same number of positives: the same shapes everywhere
    m(x[::-1].copy())
    assert _compiles(m) == [1, 1]
    m(-x)  # 5 positives instead of 6: only the segment after NonZero sees a new shape
    assert _compiles(m) == [1, 2]
    m(np.ones((3, 4), np.float32))
    assert _compiles(m) == [1, 3]


def test_graph_input_feeding_nonzero_directly_is_a_break_not_a_specialisation():
    model = _model(
        [
            oh.make_node("NonZero", ["x"], ["nz"], name="nz"),
            oh.make_node("ReduceSum", ["nz"], ["s"], keepdims=0),
        ],
        {"x": (T.FLOAT, [5])},
        ["s"],
    )
    m = _check(model, {"x": np.array([0, 1, 0, 2, 3], np.float32)})
    assert m.value_inputs == frozenset() and _kinds(m) == ["host", "jit"]
    m(np.array([4, 0, 5, 0, 6], np.float32))  # new values, same count: no new compile
    assert _compiles(m) == [1]


def test_compress_on_a_computed_condition():
    model = _model(
        [
            oh.make_node("Greater", ["x", "zero"], ["c"]),
            oh.make_node("Cast", ["c"], ["c_f"], to=T.FLOAT),
            oh.make_node("ReduceMax", ["c_f"], ["any"], keepdims=0),
            oh.make_node("Compress", ["x", "c"], ["y"], name="comp", axis=0),
            oh.make_node("Exp", ["y"], ["e"]),
        ],
        {"x": (T.FLOAT, [6])},
        ["e", "any"],
        {"zero": np.float32(0)},
    )
    for x in (rng.standard_normal(6), np.zeros(6), np.ones(6)):
        m = _check(model, {"x": x.astype(np.float32)})
    assert [b.op_type for b in m.graph_breaks] == ["Compress"]


@pytest.mark.parametrize("sorted_", [0, 1])
def test_unique_on_computed_values(sorted_):
    model = _model(
        [
            oh.make_node("Floor", ["x"], ["f"]),
            oh.make_node("Unique", ["f"], ["u", "idx", "inv", "cnt"], name="uniq", sorted=sorted_),
            oh.make_node("Mul", ["u", "u"], ["u2"]),
        ],
        {"x": (T.FLOAT, [10])},
        ["u2", "idx", "inv", "cnt"],
    )
    x = (rng.standard_normal(10) * 2).astype(np.float32)
    _check(model, {"x": x})
    _check(model, {"x": x}, x64=True)


def test_reshape_with_a_shape_computed_from_data_is_a_value_break():
    # rows = max(x) as an int: the output shape depends on x's values.
    model = _model(
        [
            oh.make_node("ReduceMax", ["x"], ["mx"], keepdims=1),
            oh.make_node("Cast", ["mx"], ["rows"], to=T.INT64),
            oh.make_node("Concat", ["rows", "minus1"], ["shape"], axis=0),
            oh.make_node("Reshape", ["x", "shape"], ["y"], name="reshape"),
            oh.make_node("Neg", ["y"], ["z"]),
        ],
        {"x": (T.FLOAT, [12])},
        ["z"],
        {"minus1": np.array([-1], np.int64)},
    )
    base = np.array([1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0], np.float32)
    m = _check(model, {"x": base * 3})
    b = m.graph_breaks[0]
    assert (b.node, b.kind, b.reads) == ("reshape", "value", ("shape",))
    assert m.value_inputs == frozenset()  # no compile per value of the float input
    assert _kinds(m) == ["jit", "jit"] and m._program.stages[1].static == ("shape",)
    _check(model, {"x": base * 4})
    m(base * 4)
    m(base[::-1] * 4)  # new values of x, same computed shape: no new compile
    assert _compiles(m) == [1, 2]  # the second segment compiles once per shape value


def test_integer_shape_inputs_are_still_specialised():
    # shape = concat(n, [-1]) computed from an integer input: one XLA program, per value.
    model = _model(
        [
            oh.make_node("Concat", ["n", "minus1"], ["shape"], axis=0),
            oh.make_node("Reshape", ["x", "shape"], ["y"]),
        ],
        {"x": (T.FLOAT, [12]), "n": (T.INT64, [1])},
        ["y"],
        {"minus1": np.array([-1], np.int64)},
    )
    m = _check(model, {"x": np.arange(12, dtype=np.float32), "n": np.array([3])})
    assert m.graph_breaks == () and m.value_inputs == {"n"}


def test_two_breaks_in_a_row():
    model = _model(
        [
            oh.make_node("Relu", ["x"], ["r"]),
            oh.make_node("NonZero", ["r"], ["nz"], name="nz"),
            oh.make_node("Unique", ["nz"], ["u"], name="uniq"),
            oh.make_node("ReduceSum", ["u"], ["s"], keepdims=0),
        ],
        {"x": (T.FLOAT, [4, 4])},
        ["s", "u"],
    )
    m = _check(model, {"x": rng.standard_normal((4, 4)).astype(np.float32)}, x64=True)
    assert _kinds(m) == ["jit", "host", "host", "jit"]
    assert [b.node for b in m.graph_breaks] == ["nz", "uniq"]


def test_value_break_after_a_host_break():
    # The Range limit is computed from NonZero's output: a host break, then a value break.
    model = _model(
        [
            oh.make_node("NonZero", ["x"], ["nz"], name="nz"),
            oh.make_node("ReduceMax", ["nz"], ["mx"], keepdims=0),
            oh.make_node("Range", ["zero", "mx", "one"], ["y"], name="range"),
            oh.make_node("Cast", ["y"], ["z"], to=T.FLOAT),
        ],
        {"x": (T.FLOAT, [6])},
        ["z"],
        {"zero": np.array(0, np.int64), "one": np.array(1, np.int64)},
    )
    m = _check(model, {"x": np.array([0, 1, 0, 0, 2, 0], np.float32)})
    assert [(b.node, b.kind) for b in m.graph_breaks] == [("nz", "host"), ("range", "value")]
    assert _kinds(m) == ["host", "jit", "jit"]


def test_loop_with_a_runtime_condition_and_scan_outputs_runs_on_the_host():
    # Iterates while the running sum stays below 4: the scan output's length depends on x.
    body = oh.make_graph(
        [
            oh.make_node("Add", ["acc_in", "x"], ["acc_out"]),
            oh.make_node("ReduceSum", ["acc_out"], ["total"], keepdims=0),
            oh.make_node("Less", ["total", "four"], ["cond_out"]),
            oh.make_node("Identity", ["acc_out"], ["scan_out"]),
        ],
        "body",
        [
            oh.make_tensor_value_info("i", T.INT64, []),
            oh.make_tensor_value_info("cond_in", T.BOOL, []),
            oh.make_tensor_value_info("acc_in", T.FLOAT, [2]),
        ],
        [
            oh.make_tensor_value_info("cond_out", T.BOOL, []),
            oh.make_tensor_value_info("acc_out", T.FLOAT, [2]),
            oh.make_tensor_value_info("scan_out", T.FLOAT, [2]),
        ],
    )
    model = _model(
        [
            oh.make_node("ReduceSum", ["x"], ["sx"], keepdims=0),
            oh.make_node("Greater", ["sx", "zero"], ["go"]),
            oh.make_node(
                "Loop", ["max_trip", "go", "acc0"], ["acc", "rows"], name="loop", body=body
            ),
            oh.make_node("Mul", ["rows", "rows"], ["sq"]),
        ],
        {"x": (T.FLOAT, [2]), "acc0": (T.FLOAT, [2])},
        ["acc", "sq"],
        {"max_trip": np.array(10, np.int64), "zero": np.float32(0), "four": np.float32(4)},
    )
    acc0 = np.zeros(2, np.float32)
    for x in ([0.5, 0.25], [1.0, 2.0], [3.0, 2.0]):  # 6, 2 and 1 iterations
        m = _check(model, {"x": np.array(x, np.float32), "acc0": acc0})
    assert [(b.node, b.kind, b.reads) for b in m.graph_breaks] == [("loop", "host", ("go",))]


def test_non_max_suppression_on_computed_scores():
    boxes = rng.uniform(0, 10, (1, 8, 4)).astype(np.float32)
    boxes[..., 2:] = boxes[..., :2] + rng.uniform(1, 3, (1, 8, 2)).astype(np.float32)
    model = _model(
        [
            oh.make_node("Sigmoid", ["logits"], ["scores"]),
            oh.make_node(
                "NonMaxSuppression", ["boxes", "scores", "k", "iou", "thr"], ["sel"], name="nms"
            ),
            oh.make_node("Gather", ["sel", "two"], ["box_idx"], axis=1),
            oh.make_node("Gather", ["boxes_flat", "box_idx"], ["picked"], axis=0),
        ],
        {
            "boxes": (T.FLOAT, [1, 8, 4]),
            "logits": (T.FLOAT, [1, 2, 8]),
            "boxes_flat": (T.FLOAT, [8, 4]),
        },
        ["picked", "sel"],
        {
            "k": np.array([3], np.int64),
            "iou": np.array([0.3], np.float32),
            "thr": np.array([0.4], np.float32),
            "two": np.array(2, np.int64),
        },
    )
    feeds = {
        "boxes": boxes,
        "logits": rng.standard_normal((1, 2, 8)).astype(np.float32),
        "boxes_flat": boxes[0],
    }
    m = _check(model, feeds)
    assert [b.op_type for b in m.graph_breaks] == ["NonMaxSuppression"]


def test_jit_of_apply_names_the_break_and_what_to_do():
    m = onnx2jax.load(nonzero_gather())
    x = rng.standard_normal((3, 4)).astype(np.float32)
    with pytest.raises(StaticValueError, match=r"'nz' \(NonZero\) is a graph break.*max_sizes"):
        jax.jit(m.apply)(m.params, x)
    with pytest.raises(StaticValueError, match="graph break"):
        jax.jit(lambda x: m(x)[0])(x)  # the model object inside the caller's jit
    # Concrete values under the caller's jit fold at trace time: no break is needed then.
    got = jax.jit(lambda p: m.apply(p, x=x))(m.params)
    np.testing.assert_allclose(got[0], m(x)[0], rtol=1e-6)


# -- the bounded mode ---------------------------------------------------------------------------


def _valid(got, count: int, axis: int = 0):
    return np.take(np.asarray(got), np.arange(int(count)), axis=axis)


def test_bounded_nonzero_is_one_program_with_padded_outputs_and_a_count():
    model = nonzero_gather()
    m = onnx2jax.load(model, max_sizes={"nz": 12})
    assert m.graph_breaks == () and m._program.stages is None
    assert m.output_names == ["s", "y", "r", "idx", "nz/count"]
    x = rng.standard_normal((3, 4)).astype(np.float32)
    s, y, r, idx, count = jax.jit(m.apply)(m.params, x)
    ref_s, ref_y, ref_r, ref_idx = ReferenceEvaluator(model).run(None, {"x": x})
    assert int(count) == len(ref_y) and idx.shape == (12, 2) and y.shape == (12,)
    np.testing.assert_array_equal(_valid(idx, count), ref_idx)
    np.testing.assert_allclose(_valid(y, count), ref_y, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(idx)[int(count) :], 0)  # padding: index 0
    np.testing.assert_allclose(r, ref_r)
    # Downstream ops see the padding: the sum includes the padded rows' x[0, 0].
    pad = 12 - int(count)
    np.testing.assert_allclose(s, ref_s + 2 * pad * x[0, 0], rtol=1e-5)
    m(x)
    m(-x)
    assert _jit_compiles(m) == 1  # one program whatever the values


def _jit_compiles(m):
    from onnx2jax._api import _jitted

    return _jitted(m._program)._cache_size()


def test_bounded_count_reports_overflow():
    model = _model(
        [oh.make_node("NonZero", ["x"], ["nz"], name="nz")], {"x": (T.FLOAT, [6])}, ["nz"]
    )
    m = onnx2jax.load(model, dynamic_bound=2)
    nz, count = m(np.array([1, 0, 2, 3, 0, 4], np.float32))
    assert int(count) == 4 and nz.shape == (1, 2)  # 4 results, the first 2 kept
    np.testing.assert_array_equal(nz, [[0, 2]])


@pytest.mark.parametrize("axis", [None, 0, 1])
def test_bounded_compress(axis):
    attrs = {} if axis is None else {"axis": axis}
    model = _model(
        [
            oh.make_node("Greater", ["c_in", "zero"], ["c"]),
            oh.make_node("Compress", ["x", "c"], ["y"], name="comp", **attrs),
        ],
        {"x": (T.FLOAT, [4, 5]), "c_in": (T.FLOAT, [4])},
        ["y"],
        {"zero": np.float32(0)},
    )
    m = onnx2jax.load(model, max_sizes={"comp": 6})
    x = rng.standard_normal((4, 5)).astype(np.float32)
    for c in (np.array([1, -1, 2, 3], np.float32), np.array([-1, -1, -1, -1], np.float32)):
        (ref,) = ReferenceEvaluator(model).run(None, {"x": x, "c_in": c})
        y, count = jax.jit(m.apply)(m.params, x, c)
        a = 0 if axis is None else axis
        assert int(count) == ref.shape[a] and y.shape[a] == 6
        np.testing.assert_allclose(_valid(y, count, a), ref)
        assert not np.asarray(y).take(np.arange(int(count), 6), axis=a).any()  # zero padding


@pytest.mark.parametrize("axis", [None, 0])
@pytest.mark.parametrize("sorted_", [0, 1])
def test_bounded_unique(axis, sorted_):
    attrs = {"sorted": sorted_} if axis is None else {"sorted": sorted_, "axis": axis}
    model = _model(
        [
            oh.make_node("Floor", ["x"], ["f"]),
            oh.make_node("Unique", ["f"], ["u", "idx", "inv", "cnt"], name="uniq", **attrs),
        ],
        {"x": (T.FLOAT, [6, 2])},
        ["u", "idx", "inv", "cnt"],
    )
    m = onnx2jax.load(model, dynamic_bound=9, x64=True)
    x = np.array([[3, 1], [1, 1], [3, 1], [0, 2], [1, 1], [5, 5]], np.float32)
    expected = ort.InferenceSession(
        model.SerializeToString(), providers=["CPUExecutionProvider"]
    ).run(None, {"x": x})
    u, idx, inv, cnt, count = jax.jit(m.apply)(m.params, x)
    assert int(count) == len(expected[3]) and u.shape[0] == 9
    np.testing.assert_array_equal(_valid(u, count), expected[0])
    np.testing.assert_array_equal(_valid(idx, count), expected[1])
    np.testing.assert_array_equal(inv, expected[2])  # one entry per input element: not padded
    np.testing.assert_array_equal(_valid(cnt, count), expected[3])
    np.testing.assert_array_equal(np.asarray(cnt)[int(count) :], 0)


def test_bounds_are_checked_at_load():
    with pytest.raises(Onnx2JaxError, match=r"max_sizes names \['nope'\].*\['nz'\]"):
        onnx2jax.load(nonzero_gather(), max_sizes={"nope": 4})
    with pytest.raises(Onnx2JaxError, match="non-negative int"):
        onnx2jax.load(nonzero_gather(), dynamic_bound=-1)
    nms = _model(
        [oh.make_node("NonMaxSuppression", ["b", "s"], ["sel"], name="nms")],
        {"b": (T.FLOAT, [1, 3, 4]), "s": (T.FLOAT, [1, 1, 3])},
        ["sel"],
    )
    with pytest.raises(Onnx2JaxError, match="bounded mode supports only"):
        onnx2jax.load(nms, max_sizes={"nms": 4})
    # A global bound leaves what it cannot bound as a graph break.
    assert [b.op_type for b in onnx2jax.load(nms, dynamic_bound=4).graph_breaks] == [
        "NonMaxSuppression"
    ]


# -- onnx2jax info --------------------------------------------------------------------------------


def test_info_lists_the_graph_breaks(tmp_path, capsys):
    path = tmp_path / "m.onnx"
    onnx.save(nonzero_gather(), path)
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert (
        "graph breaks (1; cannot run inside one jit, so the model runs as 2 jitted segment" in out
    )
    assert "node 'nz' (NonZero): 'r' decides output shapes" in out
    assert "once per distinct VALUE" not in out  # x is not specialised


def test_info_of_a_model_without_breaks(tmp_path, capsys):
    path = tmp_path / "m.onnx"
    onnx.save(_model([oh.make_node("Relu", ["x"], ["y"])], {"x": (T.FLOAT, [2])}, ["y"]), path)
    assert main(["info", str(path)]) == 0
    assert "graph breaks: none (one XLA program)" in capsys.readouterr().out
