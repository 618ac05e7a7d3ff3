"""Sequence and optional ops (ops/sequence.py) against onnx's reference, jitted and eager."""

from __future__ import annotations

import numpy as np
import onnx.helper as oh
import pytest
from onnx import TensorProto as T
from test_ops_control_flow import any_vi, check_model, make_model, seq_vi, vi

import onnx2jax
from onnx2jax._errors import NodeError

rng = np.random.default_rng(1)
F, I64, B = T.FLOAT, T.INT64, T.BOOL


def f32(*shape):
    return rng.standard_normal(shape).astype(np.float32)


def _seq_model(
    nodes, n_inputs=3, shape=(2, 3), extra_inputs=(), outputs=("out",), inits=None, opset=18
):
    """Inputs a0..a{n-1} of ``shape`` packed into sequence ``s`` by SequenceConstruct."""
    names = [f"a{i}" for i in range(n_inputs)]
    nodes = [oh.make_node("SequenceConstruct", names, ["s"]), *nodes]
    inputs = [vi(n, F, list(shape)) for n in names] + list(extra_inputs)
    return make_model(nodes, inputs, [any_vi(o) for o in outputs], inits=inits or {}, opset=opset)


def _feeds(n=3, shape=(2, 3)):
    return {f"a{i}": f32(*shape) for i in range(n)}


@pytest.mark.parametrize("position", [0, 2, -1, -3])
def test_sequence_at(position):
    model = _seq_model(
        [oh.make_node("SequenceAt", ["s", "p"], ["out"])], inits={"p": np.array(position, np.int64)}
    )
    feeds = _feeds()
    _, (out,) = check_model(model, feeds)
    np.testing.assert_array_equal(out, feeds[f"a{position % 3}"])


def test_sequence_at_position_from_a_graph_input_is_value_specialised():
    model = _seq_model(
        [oh.make_node("SequenceAt", ["s", "p"], ["out"])], extra_inputs=[vi("p", I64, [])]
    )
    assert onnx2jax.load(model).value_inputs == {"p"}
    for p in (1, -1):
        check_model(model, {**_feeds(), "p": np.array(p, np.int64)})


def test_sequence_at_out_of_range_is_an_error():
    model = _seq_model(
        [oh.make_node("SequenceAt", ["s", "p"], ["out"])], inits={"p": np.array(3, np.int64)}
    )
    with pytest.raises(NodeError, match="SequenceAt.*out of range"):
        onnx2jax.load(model)(**_feeds())


@pytest.mark.parametrize("position", [None, 0, 1, 3, -1, -3])
def test_sequence_insert(position):
    ins = ["s", "t"] + (["p"] if position is not None else [])
    inits = {"p": np.array(position, np.int64)} if position is not None else {}
    model = _seq_model(
        [oh.make_node("SequenceInsert", ins, ["out"])],
        extra_inputs=[vi("t", F, [2, 3])],
        inits=inits,
    )
    # onnx's reference inserts position len(s) at the front; the spec (and onnxruntime) appends.
    ref = "onnxruntime" if position == 3 else "onnx"
    feeds = {**_feeds(), "t": f32(2, 3)}
    _, (out,) = check_model(model, feeds, reference=ref)
    assert len(out) == 4
    at = 3 if position is None else position + 3 if position < 0 else position
    np.testing.assert_array_equal(out[at], feeds["t"])


@pytest.mark.parametrize("position", [None, 0, 1, -1, -3])
def test_sequence_erase(position):
    ins = ["s"] + (["p"] if position is not None else [])
    inits = {"p": np.array(position, np.int64)} if position is not None else {}
    model = _seq_model([oh.make_node("SequenceErase", ins, ["out"])], inits=inits)
    _, (out,) = check_model(model, _feeds())
    assert len(out) == 2


def test_sequence_length_is_static():
    # SequenceLength of a traced sequence feeds a Reshape shape: it must be a trace-time value.
    nodes = [
        oh.make_node("SequenceLength", ["s"], ["n"]),
        oh.make_node("Unsqueeze", ["n", "zero"], ["n1"]),
        oh.make_node("Concat", ["n1", "minus1"], ["shape"], axis=0),
        oh.make_node("ConcatFromSequence", ["s"], ["cat"], axis=0),
        oh.make_node("Reshape", ["cat", "shape"], ["out"]),
    ]
    model = _seq_model(
        nodes,
        outputs=("n", "out"),
        inits={"zero": np.array([0], np.int64), "minus1": np.array([-1], np.int64)},
    )
    _, (n, out) = check_model(model, _feeds())
    assert int(n) == 3 and out.shape == (3, 6)


def test_sequence_empty_then_insert():
    nodes = [
        oh.make_node("SequenceEmpty", [], ["e"], dtype=F),
        oh.make_node("SequenceLength", ["e"], ["n0"]),
        oh.make_node("SequenceInsert", ["e", "x"], ["s1"]),
        oh.make_node(
            "SequenceInsert",
            ["s1", "x"],
            [
                "s2",
            ],
        ),
        oh.make_node("SequenceLength", ["s2"], ["n2"]),
    ]
    model = make_model(nodes, [vi("x", F, [2])], [any_vi("n0"), seq_vi("s2"), any_vi("n2")])
    _, (n0, s2, n2) = check_model(model, {"x": f32(2)})
    assert int(n0) == 0 and int(n2) == 2


@pytest.mark.parametrize("axis,new_axis", [(0, 0), (1, 0), (-1, 0), (0, 1), (2, 1), (-1, 1)])
def test_concat_from_sequence(axis, new_axis):
    model = _seq_model(
        [oh.make_node("ConcatFromSequence", ["s"], ["out"], axis=axis, new_axis=new_axis)]
    )
    check_model(model, _feeds())


@pytest.mark.parametrize(
    "split,axis,keepdims",
    [
        (None, 0, 1),
        (None, 1, 0),
        (None, -1, 1),
        (2, 1, 1),
        (4, 1, 1),
        ([1, 4], 1, 1),
        ([2, 1, 2], -1, 0),
    ],
)
def test_split_to_sequence(split, axis, keepdims):
    ins = ["x"] + (["split"] if split is not None else [])
    inits = {"split": np.array(split, np.int64)} if split is not None else {}
    node = oh.make_node("SplitToSequence", ins, ["out"], axis=axis, keepdims=keepdims)
    model = make_model([node], [vi("x", F, [3, 5])], [seq_vi("out")], inits=inits)
    check_model(model, {"x": f32(3, 5)})


def test_split_then_concat_round_trip_on_static_values():
    nodes = [
        oh.make_node("SplitToSequence", ["c", "two"], ["s"], axis=0),
        oh.make_node("SequenceLength", ["s"], ["n"]),
        oh.make_node("ConcatFromSequence", ["s"], ["back"], axis=0),
        oh.make_node("Add", ["back", "x"], ["out"]),
    ]
    model = make_model(
        nodes,
        [vi("x", I64, [5])],
        [any_vi("n"), any_vi("out")],
        inits={"c": np.arange(5, dtype=np.int64), "two": np.array(2, np.int64)},
    )
    _, (n, out) = check_model(model, {"x": np.arange(5, dtype=np.int64)}, x64=True)
    assert int(n) == 3 and out.tolist() == [0, 2, 4, 6, 8]


def test_sequence_graph_inputs_and_outputs():
    """A sequence passed in and out of the model (a pytree list through jax.jit)."""
    nodes = [
        oh.make_node("SequenceAt", ["s", "zero"], ["first"]),
        oh.make_node("Mul", ["first", "first"], ["sq"]),
        oh.make_node("SequenceInsert", ["s", "sq", "zero"], ["out"]),
    ]
    model = make_model(
        nodes, [seq_vi("s", F, [4])], [seq_vi("out", F, [4])], inits={"zero": np.array(0, np.int64)}
    )
    s = [f32(4), f32(4)]
    _, (out,) = check_model(model, {"s": s})
    assert isinstance(out, list) and len(out) == 3


def test_sequence_map_two_sequences_and_a_tensor():
    body = oh.make_graph(
        [
            oh.make_node("Add", ["u", "v"], ["uv"]),
            oh.make_node("Mul", ["uv", "w"], ["o1"]),
            oh.make_node("Shape", ["u"], ["o2"]),
        ],
        "body",
        [vi("u", F, None), vi("v", F, None), vi("w", F, [1])],
        [vi("o1", F, None), vi("o2", I64, [1])],
    )
    node = oh.make_node("SequenceMap", ["s1", "s2", "w"], ["r1", "r2"], body=body)
    model = make_model(
        [node],
        [seq_vi("s1", F, ["N"]), seq_vi("s2", F, ["N"]), vi("w", F, [1])],
        [seq_vi("r1"), seq_vi("r2", I64, [1])],
    )
    # Elements of different lengths: the body runs once per element, at trace time.
    s1 = [f32(2), f32(3), f32(5)]
    s2 = [f32(2), f32(3), f32(5)]
    # onnx's reference maps at most one extra sequence.
    _, (r1, r2) = check_model(model, {"s1": s1, "s2": s2, "w": f32(1)}, reference="onnxruntime")
    assert [int(x[0]) for x in r2] == [2, 3, 5]


# -- Optional -------------------------------------------------------------------------------
# onnx's ReferenceEvaluator wraps a present optional in a one-element list, unlike onnx's
# backend test data (numpy_helper.to_optional: the value, or None); onnxruntime agrees with the
# latter, so it is the reference here.


def test_optional_of_a_tensor():
    nodes = [
        oh.make_node("Optional", ["x"], ["o"]),
        oh.make_node("OptionalHasElement", ["o"], ["has"]),
        oh.make_node("OptionalGetElement", ["o"], ["y"]),
    ]
    model = make_model(nodes, [vi("x", F, [3])], [any_vi("has"), any_vi("y")])
    _, (has, y) = check_model(model, {"x": f32(3)}, reference="onnxruntime")
    assert bool(has)


def test_empty_optional():
    tp = oh.make_tensor_type_proto(F, [3])
    nodes = [
        oh.make_node("Optional", [], ["o"], type=tp),
        oh.make_node("OptionalHasElement", ["o"], ["has"]),
        oh.make_node("OptionalHasElement", [""], ["has_absent"]),
    ]
    model = make_model(
        nodes,
        [],
        [
            oh.make_value_info("o", oh.make_optional_type_proto(tp)),
            any_vi("has"),
            any_vi("has_absent"),
        ],
    )
    _, (o, has, has_absent) = check_model(model, {}, reference="onnxruntime")
    assert o is None and not bool(has) and not bool(has_absent)


def test_optional_of_a_sequence_and_its_emptiness_decides_a_branch():
    """OptionalHasElement is static, so an If on it runs only one branch (branches that differ)."""
    seq_tp = oh.make_sequence_type_proto(oh.make_tensor_type_proto(F, None))
    then_g = oh.make_graph(
        [oh.make_node("OptionalGetElement", ["o"], ["t"])], "then", [], [seq_vi("t")]
    )
    else_g = oh.make_graph(
        [oh.make_node("SequenceConstruct", ["x", "x"], ["e"])], "else", [], [seq_vi("e")]
    )
    nodes = [
        oh.make_node("SequenceConstruct", ["x"], ["s"]),
        oh.make_node("Optional", ["s"], ["o"]),
        oh.make_node("OptionalHasElement", ["o"], ["has"]),
        oh.make_node("If", ["has"], ["r"], then_branch=then_g, else_branch=else_g),
    ]
    model = make_model(
        nodes,
        [vi("x", F, [2])],
        [oh.make_value_info("o", oh.make_optional_type_proto(seq_tp)), seq_vi("r")],
    )
    _, (o, r) = check_model(model, {"x": f32(2)}, reference="onnxruntime")
    assert isinstance(o, list) and len(o) == 1 and len(r) == 1


def test_optional_graph_input_may_be_empty():
    opt = oh.make_optional_type_proto(oh.make_tensor_type_proto(F, [2]))
    nodes = [oh.make_node("OptionalHasElement", ["o"], ["has"])]
    model = make_model(nodes, [oh.make_value_info("o", opt)], [any_vi("has")])
    m = onnx2jax.load(model)
    assert bool(m(o=None)[0]) is False
    assert bool(m(o=f32(2))[0]) is True
    assert bool(m.apply(m.params, o=None)[0]) is False


def test_optional_get_element_of_empty_is_an_error():
    nodes = [
        oh.make_node("Optional", [], ["o"], type=oh.make_tensor_type_proto(F, [3])),
        oh.make_node("OptionalGetElement", ["o"], ["y"]),
    ]
    model = make_model(nodes, [], [any_vi("y")])
    with pytest.raises(NodeError, match="OptionalGetElement.*empty optional"):
        onnx2jax.load(model)()


@pytest.mark.parametrize("opset", [15, 18])
def test_optional_ops_across_opsets(opset):
    nodes = [
        oh.make_node("Optional", ["x"], ["o"]),
        oh.make_node("OptionalGetElement", ["o"], ["y"]),
    ]
    model = make_model(nodes, [vi("x", F, [2, 2])], [any_vi("y")], opset=opset)
    check_model(model, {"x": f32(2, 2)}, reference="onnxruntime")
