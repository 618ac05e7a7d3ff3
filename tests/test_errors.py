"""Bad input gets one clear error from the onnx2jax hierarchy, naming what is wrong."""

from __future__ import annotations

import os
import time

import numpy as np
import onnx
import onnx.helper as oh
import pytest
from models_in_code import affine_relu
from onnx import TensorProto as T

import onnx2jax
from onnx2jax import InputError, ModelLoadError, Onnx2JaxError, UnsupportedOpsError

X = np.zeros((3, 4), np.float32)


def _graph_model(nodes, inputs=("x",), outputs=("y",)):
    graph = oh.make_graph(
        nodes,
        "g",
        [oh.make_tensor_value_info(i, T.FLOAT, [2]) for i in inputs],
        [oh.make_tensor_value_info(o, T.FLOAT, [2]) for o in outputs],
    )
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])


def test_hierarchy():
    for cls in (
        InputError,
        ModelLoadError,
        UnsupportedOpsError,
        onnx2jax.ExternalDataError,
        onnx2jax.StaticValueError,
        onnx2jax.NodeError,
    ):
        assert issubclass(cls, Onnx2JaxError)


def test_truncated_file(tmp_path):
    data = affine_relu().SerializeToString()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="truncated|corrupt"):
        onnx2jax.load(path)


def test_garbage_bytes():
    with pytest.raises(ModelLoadError):
        onnx2jax.load(b"\xff\xfe this is not an onnx model \x00\x01")


def test_missing_file(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        onnx2jax.load(tmp_path / "nope.onnx")


def test_cycle_names_nodes():
    model = _graph_model(
        [
            oh.make_node("Add", ["x", "b"], ["a"], name="first"),
            oh.make_node("Relu", ["a"], ["b"], name="second"),
            oh.make_node("Identity", ["a"], ["y"], name="out"),
        ]
    )
    with pytest.raises(ModelLoadError, match="cycle.*first"):
        onnx2jax.load(model)


def test_dangling_input_names_node_and_value():
    model = _graph_model([oh.make_node("Add", ["x", "ghost"], ["y"], name="adder")])
    with pytest.raises(ModelLoadError, match="adder.*ghost"):
        onnx2jax.load(model)


def test_unsupported_ops_reported_all_at_once_at_load():
    model = _graph_model(
        [
            oh.make_node("FancyOp", ["x"], ["a"], name="n1", domain="com.example"),
            oh.make_node("OtherOp", ["a"], ["y"], name="n2", domain="com.example"),
        ]
    )
    model.opset_import.append(oh.make_opsetid("com.example", 3))
    with pytest.raises(UnsupportedOpsError) as info:
        onnx2jax.load(model)
    assert len(info.value.missing) == 2
    msg = str(info.value)
    assert "com.example::FancyOp (opset 3), node 'n1'" in msg and "OtherOp" in msg


def test_unknown_attribute_reported_at_load():
    model = _graph_model([oh.make_node("Relu", ["x"], ["y"], name="r", bogus=3)])
    with pytest.raises(UnsupportedOpsError, match="bogus"):
        onnx2jax.load(model)


@pytest.fixture(scope="module")
def model():
    return onnx2jax.load(affine_relu())


def test_missing_input(model):
    with pytest.raises(InputError, match=r"missing input.*'x'.*x: float32\[batch, 4\]"):
        model()


def test_extra_input(model):
    with pytest.raises(InputError, match="unknown input.*'extra'"):
        model(X, extra=X)


def test_too_many_positional(model):
    with pytest.raises(InputError, match="2 positional"):
        model(X, X)


def test_wrong_dtype(model):
    with pytest.raises(InputError, match="'x' has dtype int32.*float32"):
        model(X.astype(np.int32))


def test_wrong_rank(model):
    with pytest.raises(InputError, match="'x' has rank 3"):
        model(X[None])


def test_wrong_fixed_dim(model):
    with pytest.raises(InputError, match="axis 1.*fixes it to 4"):
        model(np.zeros((3, 5), np.float32))


def test_same_error_through_apply(model):
    with pytest.raises(InputError):
        model.apply(model.params, X[None])


def test_missing_param(model):
    with pytest.raises(InputError, match="params lacks"):
        model.apply({}, X)


def test_server_style_recovery(model):
    """After bad calls the model still serves good ones."""
    for bad in (X[None], X.astype(np.int32)):
        with pytest.raises(InputError):
            model(bad)
    assert model(X)[0].shape == (3, 4)


def test_node_failure_names_the_node():
    # Reshape to an impossible size fails inside the op; the error names the node.
    graph = oh.make_graph(
        [oh.make_node("Reshape", ["x", "s"], ["y"], name="bad_reshape")],
        "g",
        [oh.make_tensor_value_info("x", T.FLOAT, [2, 3])],
        [oh.make_tensor_value_info("y", T.FLOAT, None)],
        [onnx.numpy_helper.from_array(np.array([4, 4], np.int64), "s")],
    )
    m = onnx2jax.load(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)]))
    with pytest.raises(onnx2jax.NodeError, match="bad_reshape"):
        m(np.zeros((2, 3), np.float32))


def test_not_a_model_type():
    with pytest.raises(TypeError, match="path, bytes"):
        onnx2jax.load(1234)


def test_no_interpreter_crash_on_empty_file(tmp_path):
    path = tmp_path / "empty.onnx"
    path.write_bytes(b"")
    with pytest.raises(ModelLoadError):
        onnx2jax.load(path)
    assert os.path.exists(path)


# -- malformed models and inputs found by mutation fuzzing (tests/fuzz_models.py) -------------


@pytest.mark.parametrize(
    "bad, match",
    [
        (None, "'x' is None"),
        ("hello", "'x': cannot make a float32 array of the str"),
        (object(), "'x': cannot make a float32 array of the object"),
        ([[1.0, 2.0], [3.0]], "'x': cannot make a float32 array of the list"),
        (np.full((3, 4), "a"), "'x' has dtype <U1"),
    ],
)
def test_input_none_string_or_object(model, bad, match):
    with pytest.raises(InputError, match=match):
        model(x=bad)
    with pytest.raises(InputError, match=match):
        model.apply(model.params, bad)


def test_untyped_input_fed_strings():
    graph = oh.make_graph(
        [oh.make_node("Identity", ["x"], ["y"], name="id")],
        "g",
        [oh.make_empty_tensor_value_info("x")],
        [oh.make_tensor_value_info("y", T.FLOAT, [2])],
    )
    m = onnx2jax.load(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)]))
    with pytest.raises(InputError, match="'x' holds <U1 values.*cannot enter a jitted"):
        m(np.array(["a", "b"]))
    with pytest.raises(InputError, match="'x' holds <U1 values"):
        m(["a", "b"])
    assert np.asarray(m(np.ones(2, np.float32))[0]).tolist() == [1.0, 1.0]


@pytest.mark.parametrize("where", ["input", "output"])
def test_unknown_elem_type_names_the_value(where):
    proto = affine_relu()
    vi = proto.graph.input[0] if where == "input" else proto.graph.output[1]
    vi.type.tensor_type.elem_type = 99
    with pytest.raises(ModelLoadError, match=f"{where} '{vi.name}' declares element type 99"):
        onnx2jax.load(proto)


def _sparse_model(indices, dims=(4, 3), values=(1.0, 2.0, 3.0)):
    sparse = oh.make_sparse_tensor(
        onnx.numpy_helper.from_array(np.array(values, np.float32), "sw"),
        onnx.numpy_helper.from_array(np.asarray(indices), "sw_idx"),
        list(dims),
    )
    graph = oh.make_graph(
        [oh.make_node("MatMul", ["x", "sw"], ["y"], name="matmul")],
        "g",
        [oh.make_tensor_value_info("x", T.FLOAT, [2, 4])],
        [oh.make_tensor_value_info("y", T.FLOAT, [2, 3])],
        sparse_initializer=[sparse],
    )
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])


def test_sparse_initializer_loads():
    m = onnx2jax.load(_sparse_model(np.array([[0, 1], [2, 0], [3, 2]], np.int64)))
    w = np.zeros((4, 3), np.float32)
    w[0, 1], w[2, 0], w[3, 2] = 1, 2, 3
    np.testing.assert_allclose(m(np.ones((2, 4), np.float32))[0], np.ones((2, 4)) @ w)


@pytest.mark.parametrize(
    "indices, dims, match",
    [
        (np.array([[0, 1], [2, 0], [4, 2]]), (4, 3), "index on axis 0 lies outside \\[0, 4\\)"),
        (np.array([[0, 1], [2, -1], [3, 2]]), (4, 3), "index on axis 1 lies outside"),
        (np.array([0, 5, 12]), (4, 3), "index on axis 0 lies outside \\[0, 12\\)"),
        (np.array([[0, 1], [2, 0]]), (4, 3), "2 indices for 3 values"),
        (np.array([[0, 1, 0], [2, 0, 0], [3, 2, 0]]), (4, 3), "indices have shape \\[3, 3\\]"),
        (np.array([0.0, 1.0, 2.0]), (4, 3), "not an integer type"),
        (np.array([0, 1, 2]), (4, -3), "negative dims"),
    ],
)
def test_malformed_sparse_initializer(indices, dims, match):
    with pytest.raises(ModelLoadError, match=f"sparse tensor 'sw'.*{match}"):
        onnx2jax.load(_sparse_model(indices, dims))


def _external_model(tmp_path, **entry):
    w = np.arange(12, dtype=np.float32).reshape(3, 4)
    (tmp_path / "w.bin").write_bytes(w.tobytes())
    t = onnx.TensorProto(name="w", data_type=T.FLOAT, dims=w.shape)
    t.data_location = T.EXTERNAL
    fields = {"location": "w.bin", "offset": "0", "length": str(w.nbytes), **entry}
    for k, v in fields.items():
        t.external_data.add(key=k, value=v)
    graph = oh.make_graph(
        [oh.make_node("MatMul", ["x", "w"], ["y"], name="matmul")],
        "g",
        [oh.make_tensor_value_info("x", T.FLOAT, [2, 3])],
        [oh.make_tensor_value_info("y", T.FLOAT, [2, 4])],
        [t],
    )
    path = tmp_path / "model.onnx"
    path.write_bytes(oh.make_model(graph).SerializeToString())
    return path


@pytest.mark.parametrize(
    "entry, match",
    [
        ({"location": "w.bin\x00.txt"}, "NUL byte"),
        ({"length": "abc"}, "'length' is 'abc', not a non-negative integer"),
        ({"length": "-4"}, "'length' is '-4'"),
        ({"offset": "0x10"}, "'offset' is '0x10'"),
        ({"offset": "99999999999999999999999"}, "reach past the end"),
        ({"offset": "40", "length": "48"}, "reach past the end"),
    ],
)
def test_malformed_external_data_entry(tmp_path, entry, match):
    with pytest.raises(onnx2jax.ExternalDataError, match=f"tensor 'w'.*{match}"):
        onnx2jax.load(_external_model(tmp_path, **entry))


def test_external_data_entry_without_length_reads_to_the_end(tmp_path):
    path = _external_model(tmp_path)
    assert onnx2jax.load(path).params["w"].shape == (3, 4)


def _loop_model(body_attr, m_value=3):
    body = oh.make_graph(
        [oh.make_node("Identity", ["c"], ["c_out"]), oh.make_node("Identity", ["v"], ["v_out"])],
        "body",
        [
            oh.make_tensor_value_info("i", T.INT64, []),
            oh.make_tensor_value_info("c", T.BOOL, []),
            oh.make_tensor_value_info("v", T.FLOAT, [2]),
        ],
        [
            oh.make_tensor_value_info("c_out", T.BOOL, []),
            oh.make_tensor_value_info("v_out", T.FLOAT, [2]),
        ],
    )
    attrs = {"body": body} if body_attr == "graph" else {}
    if body_attr == "string":
        attrs = {"body": "not a graph"}
    node = oh.make_node("Loop", ["M", "cond", "x"], ["y"], name="loop", **attrs)
    graph = oh.make_graph(
        [node],
        "g",
        [oh.make_tensor_value_info("x", T.FLOAT, [2])],
        [oh.make_tensor_value_info("y", T.FLOAT, [2])],
        [
            onnx.numpy_helper.from_array(np.array(m_value, np.int64), "M"),
            onnx.numpy_helper.from_array(np.array(True), "cond"),
        ],
    )
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])


def test_loop_without_body():
    with pytest.raises(ModelLoadError, match="'loop'.*lacks its required attribute.*'body'"):
        onnx2jax.load(_loop_model("missing"))


def test_loop_with_a_string_body():
    with pytest.raises(ModelLoadError, match="'loop'.*'body' is a STRING.*wants GRAPH"):
        onnx2jax.load(_loop_model("string"))


def test_attribute_of_the_wrong_type_or_missing():
    bad_type = _graph_model([oh.make_node("Softmax", ["x"], ["y"], name="sm", axis=1.5)])
    with pytest.raises(ModelLoadError, match="'sm'.*'axis' is a FLOAT.*wants INT"):
        onnx2jax.load(bad_type)
    missing = _graph_model([oh.make_node("Cast", ["x"], ["y"], name="cast")])
    with pytest.raises(ModelLoadError, match="'cast'.*required attribute.*'to'"):
        onnx2jax.load(missing)


def test_malformed_attribute_value_names_the_node():
    m = onnx2jax.load(_graph_model([oh.make_node("Cast", ["x"], ["y"], name="cast", to=99)]))
    with pytest.raises(onnx2jax.NodeError, match="'cast'.*element type code 99"):
        m(np.zeros(2, np.float32))


def test_node_declaring_more_outputs_than_its_op_gives():
    model = _graph_model(
        [
            oh.make_node("Relu", ["x"], ["y0", "extra"], name="r"),
            oh.make_node("Identity", ["extra"], ["y"], name="id"),
        ]
    )
    m = onnx2jax.load(model)
    with pytest.raises(onnx2jax.NodeError, match="'r'.*declares 2 outputs.*gives 1"):
        m(np.zeros(2, np.float32))


def test_unused_or_absent_extra_outputs_are_fine():
    """Optional trailing outputs nobody reads need no value (ops may return fewer)."""
    for outs in (["y", "unused"], ["y", ""]):
        m = onnx2jax.load(_graph_model([oh.make_node("Relu", ["x"], outs, name="r")]))
        assert np.asarray(m(-np.ones(2, np.float32))[0]).tolist() == [0.0, 0.0]


def test_loop_with_a_huge_cast_trip_count_fails_fast():
    """A concrete loop whose trip count is Cast(1e10): fails at once, not after 1e10 iterations.

    (Cast(inf) to int64 is undefined: numpy gives -2**63 on x86, no iteration, elsewhere 2**63-1.)
    """
    body = oh.make_graph(
        [
            oh.make_node("Identity", ["c"], ["c_out"]),
            oh.make_node("Mul", ["v", "two"], ["v_out"]),
        ],
        "body",
        [
            oh.make_tensor_value_info("i", T.INT64, []),
            oh.make_tensor_value_info("c", T.BOOL, []),
            oh.make_tensor_value_info("v", T.INT64, []),
        ],
        [
            oh.make_tensor_value_info("c_out", T.BOOL, []),
            oh.make_tensor_value_info("v_out", T.INT64, []),
        ],
        [onnx.numpy_helper.from_array(np.array(2, np.int64), "two")],
    )
    graph = oh.make_graph(
        [
            oh.make_node("Cast", ["inf"], ["M"], name="trip", to=T.INT64),
            oh.make_node("Loop", ["M", "cond", "v0"], ["v"], name="loop", body=body),
            oh.make_node("Cast", ["v"], ["vf"], name="tofloat", to=T.FLOAT),
            oh.make_node("Mul", ["x", "vf"], ["y"], name="scale"),
        ],
        "g",
        [oh.make_tensor_value_info("x", T.FLOAT, [2])],
        [oh.make_tensor_value_info("y", T.FLOAT, [2])],
        [
            onnx.numpy_helper.from_array(np.array(1e10, np.float32), "inf"),
            onnx.numpy_helper.from_array(np.array(True), "cond"),
            onnx.numpy_helper.from_array(np.array(1, np.int64), "v0"),
        ],
    )
    m = onnx2jax.load(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)]))
    t0 = time.monotonic()
    with pytest.raises(onnx2jax.NodeError, match="'loop'.*M=10000000000 iterations"):
        m(np.ones(2, np.float32))
    assert time.monotonic() - t0 < 30


@pytest.mark.parametrize("carried", ["param", "int_constant"])
def test_loop_without_trip_count_that_never_ends(carried):
    """The body passes its condition on: true for ever (the carried value is a param, traced;
    or an int constant, known at trace time)."""
    model = _loop_model("graph")
    model.graph.node[0].input[0] = ""
    model.graph.node[0].input[2] = "v0"
    v0 = np.ones(2, np.float32 if carried == "param" else np.int64)
    model.graph.initializer.append(onnx.numpy_helper.from_array(v0, "v0"))
    body = model.graph.node[0].attribute[0].g
    for vi in (body.input[2], body.output[1]):
        vi.type.tensor_type.elem_type = T.FLOAT if carried == "param" else T.INT64
    m = onnx2jax.load(model)
    with pytest.raises(onnx2jax.NodeError, match="'loop'.*never ends"):
        m(np.ones(2, np.float32))


def test_concrete_loop_that_runs_long_without_trip_count():
    """Known values, no M, a condition from data: folded, then compiled with a bound."""
    body = oh.make_graph(
        [
            oh.make_node("Add", ["v", "one"], ["v_out"]),
            oh.make_node("Less", ["v_out", "stop"], ["c_out"]),
        ],
        "body",
        [
            oh.make_tensor_value_info("i", T.INT64, []),
            oh.make_tensor_value_info("c", T.BOOL, []),
            oh.make_tensor_value_info("v", T.INT64, []),
        ],
        [
            oh.make_tensor_value_info("c_out", T.BOOL, []),
            oh.make_tensor_value_info("v_out", T.INT64, []),
        ],
        [onnx.numpy_helper.from_array(np.array(1, np.int64), "one")],
    )
    graph = oh.make_graph(
        [
            oh.make_node("Loop", ["", "", "v0"], ["v"], name="loop", body=body),
            oh.make_node("Cast", ["v"], ["y"], name="cast", to=T.FLOAT),
        ],
        "g",
        [],
        [oh.make_tensor_value_info("y", T.FLOAT, [])],
        [
            onnx.numpy_helper.from_array(np.array(0, np.int64), "v0"),
            onnx.numpy_helper.from_array(np.array(6000, np.int64), "stop"),
        ],
    )
    proto = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    assert float(onnx2jax.load(proto)()[0]) == 6000.0
    with pytest.raises(onnx2jax.NodeError, match="'loop'.*ran 5000 iterations"):
        onnx2jax.load(proto, max_loop_iterations=5000)()


def test_long_concrete_loop_is_compiled_not_folded():
    """Beyond MAX_UNROLL iterations a loop on known values runs as lax.scan: same result."""
    m = onnx2jax.load(_loop_model("graph", m_value=20_000))
    assert np.asarray(m(np.full(2, 3.0, np.float32))[0]).tolist() == [3.0, 3.0]


@pytest.mark.parametrize("trip", [2**63 - 1, 101])
def test_loop_on_runtime_values_with_huge_trip_count_fails_fast(trip):
    """The carried value is a graph input: lax.scan would run ``trip`` iterations."""
    m = onnx2jax.load(_loop_model("graph", m_value=trip), max_loop_iterations=100)
    with pytest.raises(onnx2jax.NodeError, match=f"'loop'.*runs M={trip} iterations"):
        m(np.ones(2, np.float32))


def test_max_loop_iterations_is_an_option():
    x = np.ones(2, np.float32)
    assert onnx2jax.load(_loop_model("graph", m_value=100), max_loop_iterations=100)(x)
    with pytest.raises(Onnx2JaxError, match="max_loop_iterations must be an int"):
        onnx2jax.load(_loop_model("graph"), max_loop_iterations="many")


def test_negative_trip_count_runs_no_iteration():
    m = onnx2jax.load(_loop_model("graph", m_value=-5))
    assert np.asarray(m(np.full(2, 7.0, np.float32))[0]).tolist() == [7.0, 7.0]


def test_corrupt_attribute_names_the_node():
    node = oh.make_node("Cast", ["x"], ["y"], name="cast", to=T.FLOAT)
    node.attribute[0].type = onnx.AttributeProto.UNDEFINED
    with pytest.raises(ModelLoadError, match="'cast'.*'to' is a UNDEFINED.*wants INT"):
        onnx2jax.load(_graph_model([node]))
    node = oh.make_node("Op", ["x"], ["y"], name="custom", domain="com.example", alpha=1)
    node.attribute[0].type = onnx.AttributeProto.UNDEFINED  # no schema to compare with
    with pytest.raises(ModelLoadError, match="'custom'.*attribute 'alpha'.*type 0 is no ONNX"):
        onnx2jax.load(_graph_model([node]))
    node = oh.make_node("Constant", [], ["y"], name="const", value=onnx.TensorProto(dims=[2]))
    node.attribute[0].t.data_type = 99
    with pytest.raises(ModelLoadError, match="'const'.*attribute 'value'.*data_type 99"):
        onnx2jax.load(_graph_model([node], inputs=()))


def test_sequence_input_must_be_a_list_of_arrays():
    graph = oh.make_graph(
        [oh.make_node("ConcatFromSequence", ["xs"], ["y"], name="concat", axis=0)],
        "g",
        [oh.make_tensor_sequence_value_info("xs", T.FLOAT, [2])],
        [oh.make_tensor_value_info("y", T.FLOAT, [None])],
    )
    m = onnx2jax.load(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)]))
    for bad in (None, "abc", np.ones((2, 2), np.float32)):
        with pytest.raises(InputError, match="'xs' is a sequence: pass a list of arrays"):
            m(bad)
    with pytest.raises(InputError, match="element 1 of input 'xs' is None"):
        m([np.ones(2, np.float32), None])
    with pytest.raises(InputError, match="'xs' holds <U1 values"):
        m(["a", "b"])
    assert m((np.ones(2, np.float32), np.zeros(2, np.float32)))[0].shape == (4,)


def test_hierarchy_error_from_deep_inside_an_op_names_the_node():
    """LabelEncoder's helper raises StaticValueError without knowing the node: the tracer adds it."""
    import jax

    graph = oh.make_graph(
        [
            oh.make_node("Cast", ["x"], ["xi"], name="cast", to=T.INT64),
            oh.make_node(
                "LabelEncoder",
                ["xi"],
                ["y"],
                name="enc",
                domain="ai.onnx.ml",
                keys_int64s=[1, 2],
                values_strings=["a", "b"],
                default_string="z",
            ),
        ],
        "g",
        [oh.make_tensor_value_info("x", T.FLOAT, [2])],
        [oh.make_tensor_value_info("y", T.STRING, [2])],
    )
    opsets = [oh.make_opsetid("", 17), oh.make_opsetid("ai.onnx.ml", 2)]
    m = onnx2jax.load(oh.make_model(graph, opset_imports=opsets))
    assert m(np.ones(2, np.float32))[0].tolist() == ["a", "a"]
    with pytest.raises(onnx2jax.StaticValueError, match=r"^node 'enc' \(ai.onnx.ml::LabelEncoder"):
        jax.jit(lambda x: m.apply(m.params, x))(np.ones(2, np.float32))
