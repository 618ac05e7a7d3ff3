"""Seeded mutation fuzzer: malformed models and call-time inputs must raise an Onnx2JaxError.

Each case starts from a small valid model built in code (a CNN, a Loop, an If, a sparse
initializer, external data, quantized ops, a shape path, sequences) and mutates it: byte flips,
truncation, a random protobuf field, targeted field mutations (element types, dims, attributes,
node inputs and outputs, opsets, subgraphs, sparse indices, external-data entries, loop trip
counts) and call-time mutations (None, strings, wrong dtype/rank/shape, missing or extra
inputs). Case ``i`` of seed ``s`` depends on nothing but ``(s, i)``.

Outcomes: ``ok`` (ran), ``error`` (an Onnx2JaxError subclass: the contract), and the failures
``foreign`` (any other exception), ``oom`` (MemoryError or killed), ``crash`` (the worker died
on a signal) and ``hang`` (no answer within the timeout). Cases run in worker subprocesses with
an address-space limit (RLIMIT_AS), many cases per worker; a worker that crashes or hangs is
replaced.

    python tests/fuzz_models.py --cases 10000            # counts per outcome, then failures
    python tests/fuzz_models.py --seed 7 --case 123      # one case in-process, full traceback
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import queue
import selectors
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
import onnx.helper as oh
from onnx import TensorProto as T
from onnx import numpy_helper

DEFAULT_SEED = 20240607
FAILURES = ("foreign", "oom", "crash", "hang")
HERE = os.path.abspath(__file__)


# -- seed models: small, valid, built in code -------------------------------------------------


@dataclasses.dataclass
class Seed:
    """A valid model, the inputs it runs on, and files that must sit beside it (external data)."""

    name: str
    model: onnx.ModelProto
    feeds: dict[str, Any]
    files: dict[str, bytes] = dataclasses.field(default_factory=dict)


def _init(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array), name)


def _model(nodes, inputs, outputs, inits=(), opset=17, extra_opsets=(), sparse=()):
    graph = oh.make_graph(nodes, "g", inputs, outputs, list(inits), sparse_initializer=list(sparse))
    opsets = [oh.make_opsetid("", opset), *(oh.make_opsetid(d, v) for d, v in extra_opsets)]
    return oh.make_model(graph, opset_imports=opsets)


def _vi(name: str, elem: int, shape) -> onnx.ValueInfoProto:
    return oh.make_tensor_value_info(name, elem, shape)


def seed_cnn() -> Seed:
    rng = np.random.default_rng(0)
    nodes = [
        oh.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        oh.make_node("BatchNormalization", ["c", "s", "bb", "mu", "var"], ["n"], name="bn"),
        oh.make_node("Relu", ["n"], ["r"], name="relu"),
        oh.make_node("MaxPool", ["r"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        oh.make_node("Flatten", ["p"], ["f"], name="flat", axis=1),
        oh.make_node("Gemm", ["f", "gw", "gb"], ["y"], name="gemm", transB=1),
    ]
    inits = [
        _init("w", rng.standard_normal((2, 1, 3, 3)).astype(np.float32)),
        _init("b", np.zeros(2, np.float32)),
        _init("s", np.ones(2, np.float32)),
        _init("bb", np.zeros(2, np.float32)),
        _init("mu", np.zeros(2, np.float32)),
        _init("var", np.ones(2, np.float32)),
        _init("gw", rng.standard_normal((3, 18)).astype(np.float32)),
        _init("gb", np.zeros(3, np.float32)),
    ]
    m = _model(nodes, [_vi("x", T.FLOAT, ["n", 1, 6, 6])], [_vi("y", T.FLOAT, ["n", 3])], inits)
    return Seed("cnn", m, {"x": rng.standard_normal((2, 1, 6, 6)).astype(np.float32)})


def seed_loop() -> Seed:
    """A Loop with a trip count, a condition computed in the body, a carried value and a scan output."""
    body = oh.make_graph(
        [
            oh.make_node("Add", ["v_in", "one"], ["v_out"], name="inc"),
            oh.make_node("Less", ["i", "limit"], ["cond_out"], name="less"),
            oh.make_node("Identity", ["v_out"], ["scan"], name="emit"),
        ],
        "body",
        [_vi("i", T.INT64, []), _vi("cond_in", T.BOOL, []), _vi("v_in", T.FLOAT, [3])],
        [_vi("cond_out", T.BOOL, []), _vi("v_out", T.FLOAT, [3]), _vi("scan", T.FLOAT, [3])],
        [_init("one", np.ones(3, np.float32)), _init("limit", np.array(10, np.int64))],
    )
    nodes = [oh.make_node("Loop", ["M", "cond", "x"], ["v", "scans"], name="loop", body=body)]
    inits = [_init("M", np.array(4, np.int64)), _init("cond", np.array(True))]
    outs = [_vi("v", T.FLOAT, [3]), _vi("scans", T.FLOAT, [None, 3])]
    m = _model(nodes, [_vi("x", T.FLOAT, [3])], outs, inits)
    return Seed("loop", m, {"x": np.arange(3, dtype=np.float32)})


def seed_loop_const() -> Seed:
    """A Loop on values known at trace time (folded), its trip count from Cast(float)."""
    body = oh.make_graph(
        [
            oh.make_node("Mul", ["v_in", "two"], ["v_out"], name="double"),
            oh.make_node("Identity", ["cond_in"], ["cond_out"], name="keep"),
        ],
        "body",
        [_vi("i", T.INT64, []), _vi("cond_in", T.BOOL, []), _vi("v_in", T.INT64, [])],
        [_vi("cond_out", T.BOOL, []), _vi("v_out", T.INT64, [])],
        [_init("two", np.array(2, np.int64))],
    )
    nodes = [
        oh.make_node("Cast", ["mf"], ["M"], name="trip", to=T.INT64),
        oh.make_node("Loop", ["M", "cond", "v0"], ["v"], name="loop", body=body),
        oh.make_node("Cast", ["v"], ["vf"], name="tofloat", to=T.FLOAT),
        oh.make_node("Mul", ["x", "vf"], ["y"], name="scale"),
    ]
    inits = [
        _init("mf", np.array(3.0, np.float32)),
        _init("cond", np.array(True)),
        _init("v0", np.array(1, np.int64)),
    ]
    m = _model(nodes, [_vi("x", T.FLOAT, [2])], [_vi("y", T.FLOAT, [2])], inits)
    return Seed("loop_const", m, {"x": np.ones(2, np.float32)})


def seed_if() -> Seed:
    then = oh.make_graph(
        [oh.make_node("Add", ["x", "c1"], ["t"], name="then_add")],
        "then",
        [],
        [_vi("t", T.FLOAT, [2, 3])],
        [_init("c1", np.full((2, 3), 2.0, np.float32))],
    )
    other = oh.make_graph(
        [oh.make_node("Mul", ["x", "c2"], ["e"], name="else_mul")],
        "else",
        [],
        [_vi("e", T.FLOAT, [2, 3])],
        [_init("c2", np.full((2, 3), 3.0, np.float32))],
    )
    nodes = [
        oh.make_node("If", ["cond"], ["y"], name="if", then_branch=then, else_branch=other),
        oh.make_node("Softmax", ["y"], ["z"], name="softmax", axis=-1),
    ]
    ins = [_vi("x", T.FLOAT, [2, 3]), _vi("cond", T.BOOL, [])]
    m = _model(nodes, ins, [_vi("z", T.FLOAT, [2, 3])])
    return Seed("if", m, {"x": np.ones((2, 3), np.float32), "cond": np.array(True)})


def seed_sparse() -> Seed:
    values = _init("sw", np.array([1.5, -2.0, 3.0], np.float32))
    indices = _init("sw_idx", np.array([[0, 1], [2, 0], [3, 2]], np.int64))
    sparse = oh.make_sparse_tensor(values, indices, [4, 3])
    values1 = _init("sb", np.array([0.5, 1.0], np.float32))
    sparse1 = oh.make_sparse_tensor(values1, _init("sb_idx", np.array([0, 2], np.int64)), [3])
    nodes = [
        oh.make_node("MatMul", ["x", "sw"], ["mm"], name="matmul"),
        oh.make_node("Add", ["mm", "sb"], ["y"], name="add"),
    ]
    m = _model(
        nodes, [_vi("x", T.FLOAT, [2, 4])], [_vi("y", T.FLOAT, [2, 3])], sparse=[sparse, sparse1]
    )
    return Seed("sparse", m, {"x": np.ones((2, 4), np.float32)})


def seed_external() -> Seed:
    w = np.arange(12, dtype=np.float32).reshape(3, 4)
    b = np.array([1, 2, 3, 4], np.float32)
    blob = w.tobytes() + b.tobytes()
    inits = []
    for name, arr, offset in (("w", w, 0), ("b", b, w.nbytes)):
        t = onnx.TensorProto(name=name, data_type=T.FLOAT, dims=arr.shape)
        t.data_location = T.EXTERNAL
        for k, v in (
            ("location", "weights.bin"),
            ("offset", str(offset)),
            ("length", str(arr.nbytes)),
        ):
            t.external_data.add(key=k, value=v)
        inits.append(t)
    nodes = [
        oh.make_node("MatMul", ["x", "w"], ["mm"], name="matmul"),
        oh.make_node("Add", ["mm", "b"], ["y"], name="add"),
    ]
    m = _model(nodes, [_vi("x", T.FLOAT, [2, 3])], [_vi("y", T.FLOAT, [2, 4])], inits)
    return Seed("external", m, {"x": np.ones((2, 3), np.float32)}, {"weights.bin": blob})


def seed_quant() -> Seed:
    rng = np.random.default_rng(1)
    nodes = [
        oh.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"], name="quant"),
        oh.make_node(
            "QLinearMatMul", ["xq", "xs", "xz", "w", "ws", "wz", "ys", "yz"], ["yq"], name="qmm"
        ),
        oh.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["y"], name="dequant"),
        oh.make_node("MatMulInteger", ["xq", "w", "xz", "wz"], ["acc"], name="mmi"),
    ]
    inits = [
        _init("xs", np.array(0.05, np.float32)),
        _init("xz", np.array(128, np.uint8)),
        _init("w", rng.integers(0, 255, (4, 2)).astype(np.uint8)),
        _init("ws", np.array(0.02, np.float32)),
        _init("wz", np.array(120, np.uint8)),
        _init("ys", np.array(0.1, np.float32)),
        _init("yz", np.array(100, np.uint8)),
    ]
    outs = [_vi("y", T.FLOAT, [3, 2]), _vi("acc", T.INT32, [3, 2])]
    m = _model(nodes, [_vi("x", T.FLOAT, [3, 4])], outs, inits)
    return Seed("quant", m, {"x": rng.standard_normal((3, 4)).astype(np.float32)})


def seed_shapes() -> Seed:
    """Shape arithmetic at trace time: Shape, Gather, Concat, Reshape, ConstantOfShape, Expand."""
    nodes = [
        oh.make_node("Shape", ["x"], ["sh"], name="shape"),
        oh.make_node("Gather", ["sh", "i0"], ["d0"], name="gather", axis=0),
        oh.make_node("Concat", ["d0", "minus1"], ["newshape"], name="concat", axis=0),
        oh.make_node("Reshape", ["x", "newshape"], ["r"], name="reshape"),
        oh.make_node(
            "ConstantOfShape",
            ["sh"],
            ["zeros"],
            name="cos",
            value=_init("", np.array([1.0], np.float32)),
        ),
        oh.make_node("Add", ["x", "zeros"], ["xz"], name="add"),
        oh.make_node("Slice", ["xz", "starts", "ends", "axes"], ["sl"], name="slice"),
        oh.make_node("Expand", ["sl", "eshape"], ["y"], name="expand"),
        oh.make_node("ReduceSum", ["r", "raxes"], ["s"], name="rsum", keepdims=0),
    ]
    inits = [
        _init("i0", np.array([0], np.int64)),
        _init("minus1", np.array([-1], np.int64)),
        _init("starts", np.array([0], np.int64)),
        _init("ends", np.array([1], np.int64)),
        _init("axes", np.array([1], np.int64)),
        _init("eshape", np.array([2, 3, 4], np.int64)),
        _init("raxes", np.array([1], np.int64)),
    ]
    outs = [_vi("y", T.FLOAT, [2, 3, 4]), _vi("s", T.FLOAT, [2])]
    m = _model(nodes, [_vi("x", T.FLOAT, [2, 3, 4])], outs, inits)
    return Seed("shapes", m, {"x": np.ones((2, 3, 4), np.float32)})


def seed_sequence() -> Seed:
    nodes = [
        oh.make_node("SplitToSequence", ["x"], ["seq"], name="split", axis=0, keepdims=0),
        oh.make_node("SequenceAt", ["seq", "pos"], ["first"], name="at"),
        oh.make_node("ConcatFromSequence", ["seq"], ["y"], name="concat", axis=0, new_axis=1),
        oh.make_node("Gather", ["x", "idx"], ["g"], name="gather", axis=1),
    ]
    inits = [_init("pos", np.array(1, np.int64)), _init("idx", np.array([2, 0], np.int64))]
    outs = [_vi("first", T.FLOAT, [4]), _vi("y", T.FLOAT, [3, 4]), _vi("g", T.FLOAT, [3, 2])]
    m = _model(nodes, [_vi("x", T.FLOAT, [3, 4])], outs, inits)
    return Seed("sequence", m, {"x": np.arange(12, dtype=np.float32).reshape(3, 4)})


def seed_sequence_input() -> Seed:
    """A graph input of sequence type: ConcatFromSequence and SequenceLength."""
    seq = oh.make_tensor_sequence_value_info("xs", T.FLOAT, [2])
    nodes = [
        oh.make_node("ConcatFromSequence", ["xs"], ["y"], name="concat", axis=0),
        oh.make_node("SequenceLength", ["xs"], ["n"], name="len"),
    ]
    outs = [_vi("y", T.FLOAT, [None]), _vi("n", T.INT64, [])]
    m = _model(nodes, [seq], outs)
    return Seed("sequence_input", m, {"xs": [np.ones(2, np.float32), np.zeros(2, np.float32)]})


SEEDS: dict[str, Callable[[], Seed]] = {
    "cnn": seed_cnn,
    "loop": seed_loop,
    "loop_const": seed_loop_const,
    "if": seed_if,
    "sparse": seed_sparse,
    "external": seed_external,
    "quant": seed_quant,
    "shapes": seed_shapes,
    "sequence": seed_sequence,
    "sequence_input": seed_sequence_input,
}


# -- mutations ----------------------------------------------------------------------------

INTS = [
    0,
    1,
    -1,
    2,
    3,
    7,
    16,
    255,
    256,
    2**15,
    2**31 - 1,
    -(2**31),
    2**32,
    2**62,
    2**63 - 1,
    -(2**63),
]
FLOATS = [0.0, -0.0, 1.0, -1.0, 0.5, float("nan"), float("inf"), float("-inf"), 1e38, 1e-45]
ELEM_TYPES = [-1, 0, 1, 2, 3, 6, 7, 8, 9, 10, 11, 16, 17, 21, 23, 25, 26, 27, 99, 1000, 2**31 - 1]
OPSETS = [-1, 0, 1, 6, 7, 9, 11, 13, 16, 17, 21, 23, 24, 26, 100, 2**31 - 1, 2**40]
OP_TYPES = [
    "Relu",
    "Add",
    "Loop",
    "If",
    "Scan",
    "Reshape",
    "Concat",
    "Split",
    "NonZero",
    "TopK",
    "Gather",
    "Cast",
    "Constant",
    "Identity",
    "Unique",
    "Dropout",
    "LSTM",
    "Resize",
    "ConstantOfShape",
    "Range",
    "Tile",
    "Expand",
    "Pad",
    "Slice",
    "Einsum",
    "Bogus",
]
STRINGS = [
    "",
    "\x00",
    "x" * 300,
    "ghost",
    "../../etc/passwd",
    "ai.onnx",
    "com.microsoft",
    "ai.onnx.ml",
    "é∆",
    " ",
    "NaN",
]


def _int_range(fd) -> tuple[int, int]:
    if fd.type in (fd.TYPE_UINT64, fd.TYPE_FIXED64):
        return 0, 2**64 - 1
    if fd.type in (fd.TYPE_UINT32, fd.TYPE_FIXED32):
        return 0, 2**32 - 1
    if fd.cpp_type == fd.CPPTYPE_INT32:
        return -(2**31), 2**31 - 1
    return -(2**63), 2**63 - 1


class Mutator:
    """Mutations of one case; every choice comes from ``rng``, every change is described."""

    def __init__(self, rng: np.random.Generator, seed: Seed):
        self.rng = rng
        self.seed = seed
        g = seed.model.graph
        names = {v.name for v in (*g.input, *g.output, *g.initializer)}
        for n in _all_nodes(g):
            names.update(n.input)
            names.update(n.output)
        self.names = sorted(names)

    def pick(self, seq):
        return seq[int(self.rng.integers(len(seq)))]

    def an_int(self, lo=-(2**63), hi=2**63 - 1) -> int:
        pool = [i for i in INTS if lo <= i <= hi]
        if self.rng.random() < 0.3:
            return int(self.rng.integers(max(lo, -10), min(hi, 10) + 1))
        return int(self.pick(pool))

    def a_string(self) -> str:
        r = self.rng.random()
        if r < 0.4 and self.names:
            return self.pick(self.names)
        if r < 0.6:
            return self.pick(OP_TYPES)
        return self.pick(STRINGS)

    def a_bytes(self, old: bytes) -> bytes:
        r = self.rng.random()
        if r < 0.3 and old:
            return old[: int(self.rng.integers(len(old)))]
        if r < 0.6 and old:
            b = bytearray(old)
            for _ in range(int(self.rng.integers(1, 4))):
                b[int(self.rng.integers(len(b)))] ^= 1 << int(self.rng.integers(8))
            return bytes(b)
        if r < 0.8:
            return old + bytes(
                self.rng.integers(0, 256, int(self.rng.integers(1, 9)), dtype=np.uint8)
            )
        return self.pick([b"", b"\xff\xfe", b"\x00" * 7, "é".encode()])

    def a_float(self) -> float:
        return (
            float(self.pick(FLOATS)) if self.rng.random() < 0.7 else float(self.rng.normal() * 100)
        )

    # -- generic: any protobuf field anywhere in the model ----------------------------------
    def proto_field(self, m: onnx.ModelProto) -> str:
        fields: list[tuple[Any, Any, str]] = []
        _walk(m, "model", fields)
        set_fields = [f for f in fields if _is_set(f[0], f[1])]
        msg, fd, path = self.pick(set_fields if set_fields and self.rng.random() < 0.85 else fields)
        return self.mutate_field(msg, fd, path)

    def mutate_field(self, msg, fd, path: str) -> str:
        name = fd.name
        if fd.is_repeated:
            items = getattr(msg, name)
            r = self.rng.random()
            if fd.cpp_type == fd.CPPTYPE_MESSAGE:
                if r < 0.35 and len(items):
                    i = int(self.rng.integers(len(items)))
                    del items[i]
                    return f"{path}: deleted [{i}]"
                if r < 0.7 and len(items):
                    i = int(self.rng.integers(len(items)))
                    items.add().CopyFrom(items[i])
                    return f"{path}: appended a copy of [{i}]"
                if r < 0.85 and len(items) > 1:
                    a, b = (int(x) for x in self.rng.choice(len(items), 2, replace=False))
                    ca, cb = type(items[a])(), type(items[b])()
                    ca.CopyFrom(items[a])
                    cb.CopyFrom(items[b])
                    items[a].CopyFrom(cb)
                    items[b].CopyFrom(ca)
                    return f"{path}: swapped [{a}] and [{b}]"
                msg.ClearField(name)
                return f"{path}: cleared"
            if r < 0.3 and len(items):
                i = int(self.rng.integers(len(items)))
                del items[i]
                return f"{path}: deleted [{i}]"
            if r < 0.45:
                msg.ClearField(name)
                return f"{path}: cleared"
            value = self.scalar_for(fd, items[0] if len(items) else None)
            if r < 0.7 or not len(items):
                items.append(value)
                return f"{path}: appended {value!r}"
            i = int(self.rng.integers(len(items)))
            items[i] = value
            return f"{path}[{i}] = {value!r}"
        if fd.cpp_type == fd.CPPTYPE_MESSAGE:
            if msg.HasField(name) and self.rng.random() < 0.6:
                msg.ClearField(name)
                return f"{path}: cleared"
            getattr(msg, name).SetInParent()
            return f"{path}: set empty"
        value = self.scalar_for(fd, getattr(msg, name))
        setattr(msg, name, value)
        return f"{path} = {value!r}"

    def scalar_for(self, fd, old):
        c = fd.cpp_type
        if c == fd.CPPTYPE_ENUM:
            return int(self.pick([v.number for v in fd.enum_type.values]))
        if c in (fd.CPPTYPE_INT32, fd.CPPTYPE_INT64, fd.CPPTYPE_UINT32, fd.CPPTYPE_UINT64):
            lo, hi = _int_range(fd)
            if fd.name in ("elem_type", "data_type") and self.rng.random() < 0.7:
                return int(self.pick([e for e in ELEM_TYPES if lo <= e <= hi]))
            return self.an_int(lo, hi)
        if c in (fd.CPPTYPE_FLOAT, fd.CPPTYPE_DOUBLE):
            return self.a_float()
        if c == fd.CPPTYPE_BOOL:
            return not bool(old)
        if fd.type == fd.TYPE_BYTES:
            return self.a_bytes(old if isinstance(old, bytes) else b"")
        return self.a_string()

    # -- targeted mutations ------------------------------------------------------------------
    def elem_type(self, m: onnx.ModelProto) -> str:
        vis = [*m.graph.input, *m.graph.output]
        vi = self.pick(vis)
        code = self.pick(ELEM_TYPES)
        vi.type.tensor_type.elem_type = code
        return f"value {vi.name!r}: elem_type = {code}"

    def io_dims(self, m: onnx.ModelProto) -> str:
        vi = self.pick([*m.graph.input, *m.graph.output])
        shape = vi.type.tensor_type.shape
        r = self.rng.random()
        if r < 0.2:
            vi.type.tensor_type.ClearField("shape")
            return f"value {vi.name!r}: shape removed"
        if r < 0.35 or not len(shape.dim):
            shape.dim.add().dim_value = self.an_int(0, 2**63 - 1)
            return f"value {vi.name!r}: a dim appended"
        i = int(self.rng.integers(len(shape.dim)))
        if r < 0.5:
            del shape.dim[i]
            return f"value {vi.name!r}: dim {i} removed"
        if r < 0.7:
            shape.dim[i].dim_param = self.a_string()
            return f"value {vi.name!r}: dim {i} = param {shape.dim[i].dim_param!r}"
        shape.dim[i].dim_value = self.an_int()
        return f"value {vi.name!r}: dim {i} = {shape.dim[i].dim_value}"

    def io_type(self, m: onnx.ModelProto) -> str:
        vi = self.pick([*m.graph.input, *m.graph.output])
        r = self.rng.random()
        if r < 0.4:
            vi.ClearField("type")
            return f"value {vi.name!r}: type removed"
        if r < 0.7:
            vi.type.sequence_type.elem_type.tensor_type.elem_type = T.FLOAT
            return f"value {vi.name!r}: now a sequence type"
        vi.type.optional_type.elem_type.tensor_type.elem_type = T.FLOAT
        return f"value {vi.name!r}: now an optional type"

    def initializer(self, m: onnx.ModelProto) -> str:
        tensors = _all_initializers(m.graph)
        if not tensors:
            return self.proto_field(m)
        t = self.pick(tensors)
        arr = numpy_helper.to_array(t) if t.data_location != T.EXTERNAL else None
        r = self.rng.random()
        if r < 0.35 and arr is not None:
            if arr.dtype.kind in "iu":
                info = np.iinfo(arr.dtype)
                v = self.an_int(int(info.min), int(info.max))
            elif arr.dtype.kind == "f":
                v = self.a_float()
            else:
                v = bool(self.rng.integers(2))
            new = np.full(arr.shape, v, arr.dtype)
            t.CopyFrom(numpy_helper.from_array(new, t.name))
            return f"initializer {t.name!r}: every value = {v!r}"
        if r < 0.55:
            t.data_type = self.pick(ELEM_TYPES[1:])
            return f"initializer {t.name!r}: data_type = {t.data_type}"
        if r < 0.8:
            if len(t.dims) and self.rng.random() < 0.5:
                i = int(self.rng.integers(len(t.dims)))
                t.dims[i] = self.an_int()
                return f"initializer {t.name!r}: dims[{i}] = {t.dims[i]}"
            t.dims.append(self.an_int())
            return f"initializer {t.name!r}: dim {t.dims[-1]} appended"
        t.raw_data = self.a_bytes(t.raw_data)
        return f"initializer {t.name!r}: raw_data of {len(t.raw_data)} bytes"

    def attribute(self, m: onnx.ModelProto) -> str:
        nodes = [n for n in _all_nodes(m.graph) if len(n.attribute)]
        if not nodes:
            return self.node_io(m)
        n = self.pick(nodes)
        i = int(self.rng.integers(len(n.attribute)))
        a = n.attribute[i]
        r = self.rng.random()
        if r < 0.25:
            del n.attribute[i]
            return f"node {n.name!r}: attribute {a.name!r} removed"
        if r < 0.45:
            a.type = self.pick(list(onnx.AttributeProto.AttributeType.values()))
            return f"node {n.name!r}: attribute {a.name!r} type = {a.type} (value kept)"
        if r < 0.6:
            new = oh.make_attribute(
                a.name, self.pick([self.an_int(), self.a_float(), "junk", [1, -1]])
            )
            n.attribute[i].CopyFrom(new)
            return f"node {n.name!r}: attribute {a.name!r} replaced by {new.type} value"
        if r < 0.7:
            n.attribute.append(oh.make_attribute("bogus", 1))
            return f"node {n.name!r}: attribute 'bogus' added"
        if a.type == a.INT:
            a.i = self.an_int()
            return f"node {n.name!r}: {a.name} = {a.i}"
        if a.type == a.INTS:
            a.ints.append(self.an_int())
            return f"node {n.name!r}: {a.name} appended {a.ints[-1]}"
        if a.type == a.FLOAT:
            a.f = self.a_float()
            return f"node {n.name!r}: {a.name} = {a.f}"
        if a.type == a.GRAPH:
            msg, fd, path = self.pick(_walk(a.g, f"node {n.name!r}.{a.name}", []))
            return self.mutate_field(msg, fd, path)
        if a.type == a.TENSOR:
            a.t.raw_data = self.a_bytes(a.t.raw_data)
            return f"node {n.name!r}: {a.name} raw_data of {len(a.t.raw_data)} bytes"
        a.s = self.a_bytes(a.s)
        return f"node {n.name!r}: {a.name} = {a.s!r}"

    def node_io(self, m: onnx.ModelProto) -> str:
        n = self.pick(list(_all_nodes(m.graph)))
        r = self.rng.random()
        if r < 0.2:
            n.output.append(self.pick(["extra", "", n.output[0] if n.output else "z"]))
            if self.rng.random() < 0.5 and n.output[-1]:
                m.graph.node.append(
                    oh.make_node("Identity", [n.output[-1]], ["extra_out"], name="reader")
                )
                m.graph.output.append(_vi("extra_out", T.FLOAT, None))
            return f"node {n.name!r}: output {n.output[-1]!r} appended (maybe read by 'reader')"
        if r < 0.35 and len(n.output):
            i = int(self.rng.integers(len(n.output)))
            n.output[i] = self.pick(["", "ghost", *self.names])
            return f"node {n.name!r}: output {i} = {n.output[i]!r}"
        if r < 0.55 and len(n.input):
            i = int(self.rng.integers(len(n.input)))
            n.input[i] = self.pick(["", "ghost", *self.names])
            return f"node {n.name!r}: input {i} = {n.input[i]!r}"
        if r < 0.7:
            n.input.append(self.pick(["", *self.names]))
            return f"node {n.name!r}: input {n.input[-1]!r} appended"
        if r < 0.8 and len(n.input):
            del n.input[int(self.rng.integers(len(n.input)))]
            return f"node {n.name!r}: an input removed"
        if r < 0.9:
            n.op_type = self.pick(OP_TYPES)
            return f"node {n.name!r}: op_type = {n.op_type!r}"
        n.domain = self.pick(["com.microsoft", "ai.onnx.ml", "bogus.domain", "ai.onnx"])
        return f"node {n.name!r}: domain = {n.domain!r}"

    def opset(self, m: onnx.ModelProto) -> str:
        r = self.rng.random()
        if r < 0.7 and len(m.opset_import):
            v = self.pick(OPSETS)
            m.opset_import[0].version = v
            return f"opset {m.opset_import[0].domain!r} = {v}"
        if r < 0.85:
            m.ClearField("opset_import")
            m.ir_version = self.pick([0, 1, 2, 3, 7, 11, 100])
            return f"opset_import removed, ir_version = {m.ir_version}"
        m.ir_version = self.pick([-1, 0, 1, 3, 100, 2**40])
        return f"ir_version = {m.ir_version}"

    def subgraph(self, m: onnx.ModelProto) -> str:
        nodes = [n for n in _all_nodes(m.graph) if any(a.type == a.GRAPH for a in n.attribute)]
        if not nodes:
            return self.attribute(m)
        n = self.pick(nodes)
        i = self.pick([j for j, a in enumerate(n.attribute) if a.type == a.GRAPH])
        a = n.attribute[i]
        r = self.rng.random()
        if r < 0.3:
            del n.attribute[i]
            return f"node {n.name!r}: graph attribute {a.name!r} removed"
        if r < 0.5:
            n.attribute[i].CopyFrom(oh.make_attribute(a.name, "not a graph"))
            return f"node {n.name!r}: graph attribute {a.name!r} is a string"
        if r < 0.65:
            a.type = a.STRING
            return f"node {n.name!r}: graph attribute {a.name!r} typed STRING"
        g = a.g
        what = self.pick(["input", "output", "node", "initializer"])
        items = getattr(g, what)
        if len(items):
            del items[int(self.rng.integers(len(items)))]
            return f"node {n.name!r}: {a.name} lost one {what}"
        return f"node {n.name!r}: {a.name} unchanged"

    def sparse(self, m: onnx.ModelProto) -> str:
        if not len(m.graph.sparse_initializer):
            return self.initializer(m)
        sp = self.pick(list(m.graph.sparse_initializer))
        name = sp.values.name
        r = self.rng.random()
        idx = numpy_helper.to_array(sp.indices) if len(sp.indices.dims) else np.zeros(0, np.int64)
        if r < 0.4 and idx.size:
            flat = idx.reshape(-1).copy()
            flat[int(self.rng.integers(flat.size))] = self.pick(
                [-1, -100, 3, 4, 12, 2**40, 2**63 - 1]
            )
            sp.indices.CopyFrom(numpy_helper.from_array(flat.reshape(idx.shape), sp.indices.name))
            return f"sparse {name!r}: an index = {flat.max()} / {flat.min()}"
        if r < 0.6 and len(sp.dims):
            i = int(self.rng.integers(len(sp.dims)))
            sp.dims[i] = self.pick([-1, 0, 1, 2**40, 2**62])
            return f"sparse {name!r}: dims[{i}] = {sp.dims[i]}"
        if r < 0.7:
            sp.dims.append(self.pick([1, 2, 0]))
            return f"sparse {name!r}: a dim appended"
        if r < 0.8:
            shape = [idx.size] if self.rng.random() < 0.5 else [1, 1, max(idx.size, 1)]
            arr = np.resize(idx.reshape(-1), shape).astype(
                self.pick([np.int64, np.float32, np.int32])
            )
            sp.indices.CopyFrom(numpy_helper.from_array(arr, sp.indices.name))
            return f"sparse {name!r}: indices reshaped to {shape} ({arr.dtype})"
        vals = numpy_helper.to_array(sp.values)
        cut = vals[: int(self.rng.integers(len(vals) + 1))]
        extra = np.concatenate([vals, vals])
        new = cut if self.rng.random() < 0.5 else extra
        sp.values.CopyFrom(numpy_helper.from_array(new, name))
        return f"sparse {name!r}: {len(new)} values for {idx.shape[0] if idx.ndim else 0} indices"

    def external(self, m: onnx.ModelProto) -> str:
        tensors = [t for t in m.graph.initializer if t.data_location == T.EXTERNAL]
        if not tensors:
            return self.initializer(m)
        t = self.pick(tensors)
        entries = {e.key: e for e in t.external_data}
        key = self.pick(["location", "offset", "length", "checksum", "bogus"])
        values = {
            "location": [
                "weights.bin\x00.txt",
                "../weights.bin",
                "/tmp/weights.bin",
                "",
                ".",
                "sub/../weights.bin",
                "missing.bin",
                "link.bin",
                "weights.bin/",
                "x" * 5000,
                "C:\\weights.bin",
                "é.bin",
            ],
            "offset": ["-1", "abc", "1e3", "99999999999999999999999", " 4", "0x10", "", "48", "47"],
            "length": ["-1", "abc", "0", "99999999999999999999999", "1", "64", "", "3.5"],
        }.get(key, ["x", ""])
        v = self.pick(values)
        r = self.rng.random()
        if r < 0.15 and key in entries:
            t.external_data.remove(entries[key])
            return f"initializer {t.name!r}: external {key!r} removed"
        if r < 0.25:
            t.data_location = T.DEFAULT
            return f"initializer {t.name!r}: data_location = DEFAULT (no data)"
        if key in entries:
            entries[key].value = v
        else:
            t.external_data.add(key=key, value=v)
        return f"initializer {t.name!r}: external {key} = {v!r}"

    def loop_trip(self, m: onnx.ModelProto) -> str:
        for t in m.graph.initializer:
            if t.name == "M":
                v = self.pick([2**63 - 1, 2**31 - 1, -1, 0, 10**6, 100_001, 2**62])
                t.CopyFrom(numpy_helper.from_array(np.array(v, np.int64), "M"))
                return f"Loop trip count M = {v}"
            if t.name == "mf":
                v = self.pick([float("inf"), float("-inf"), float("nan"), 1e30, 3e9, -5.0])
                t.CopyFrom(numpy_helper.from_array(np.array(v, np.float32), "mf"))
                return f"Loop trip count Cast({v})"
            if t.name == "cond":
                t.CopyFrom(numpy_helper.from_array(np.array(False), "cond"))
                return "Loop condition initially false"
        return self.initializer(m)

    # -- call-time mutations -----------------------------------------------------------------
    def call(self, feeds: dict[str, Any]) -> tuple[tuple, dict[str, Any], str]:
        feeds = dict(feeds)
        name = self.pick(sorted(feeds))
        x = feeds[name]
        r = self.rng.random()
        bad: Any
        choices: list[tuple[str, Callable[[], Any]]] = [
            ("None", lambda: None),
            ("a str", lambda: "hello"),
            ("bytes", lambda: b"\x00\x01"),
            ("a string array", lambda: np.full(np.shape(x), "a")),
            ("an object array", lambda: np.full(np.shape(x), object())),
            ("an object", object),
            ("a ragged list", lambda: [[1.0, 2.0], [3.0]]),
            ("a nested list", lambda: np.asarray(x).tolist()),
            ("a dict", lambda: {"a": x}),
            ("int32", lambda: np.asarray(x).astype(np.int32)),
            ("float64", lambda: np.asarray(x).astype(np.float64)),
            ("float16", lambda: np.asarray(x).astype(np.float16)),
            ("bool", lambda: np.asarray(x).astype(bool)),
            ("complex", lambda: np.asarray(x).astype(np.complex64)),
            ("uint8", lambda: np.asarray(x).astype(np.uint8)),
            ("datetime", lambda: np.zeros(np.shape(x), "datetime64[s]")),
            ("bytes array", lambda: np.zeros(np.shape(x), "S3")),
            ("an extra axis", lambda: np.asarray(x)[None]),
            ("one axis less", lambda: np.asarray(x)[0] if np.ndim(x) else np.asarray(x).reshape(1)),
            (
                "a grown axis",
                lambda: np.concatenate([np.asarray(x)] * 2) if np.ndim(x) else np.asarray([x, x]),
            ),
            (
                "an empty axis",
                lambda: np.asarray(x)[:0] if np.ndim(x) else np.zeros(0, np.asarray(x).dtype),
            ),
            ("NaNs", lambda: np.full(np.shape(x), np.nan, np.float32)),
            ("a huge int", lambda: 2**70),
            ("a scalar", lambda: 1.5),
            ("a list of strings", lambda: ["a", "b"]),
            ("a jax array", lambda: __import__("jax.numpy").numpy.asarray(x)),
        ]
        args: tuple = ()
        if r < 0.1:
            del feeds[name]
            return args, feeds, f"call: input {name!r} missing"
        if r < 0.18:
            feeds["bogus"] = x
            return args, feeds, "call: extra input 'bogus'"
        if r < 0.24:
            return tuple(feeds.values()) + (x,), {}, "call: one positional input too many"
        label, make = self.pick(choices)
        bad = make()
        feeds[name] = bad
        return args, feeds, f"call: input {name!r} = {label}"


def _walk(msg, path: str, out: list) -> list:
    for fd in msg.DESCRIPTOR.fields:
        p = f"{path}.{fd.name}"
        out.append((msg, fd, p))
        if fd.cpp_type != fd.CPPTYPE_MESSAGE:
            continue
        if fd.is_repeated:
            for i, sub in enumerate(getattr(msg, fd.name)):
                _walk(sub, f"{p}[{i}]", out)
        elif msg.HasField(fd.name):
            _walk(getattr(msg, fd.name), p, out)
    return out


def _is_set(msg, fd) -> bool:
    if fd.is_repeated:
        return len(getattr(msg, fd.name)) > 0
    if fd.has_presence:
        return msg.HasField(fd.name)
    return bool(getattr(msg, fd.name))


def _all_nodes(g: onnx.GraphProto):
    for n in g.node:
        yield n
        for a in n.attribute:
            if a.type == a.GRAPH:
                yield from _all_nodes(a.g)


def _all_initializers(g: onnx.GraphProto) -> list[onnx.TensorProto]:
    out = list(g.initializer)
    for n in g.node:
        for a in n.attribute:
            if a.type == a.GRAPH:
                out += _all_initializers(a.g)
            elif a.type == a.TENSOR:
                out.append(a.t)
    return out


# Mutation families and their weights (a case may stack up to three model mutations).
FAMILIES: list[tuple[str, float]] = [
    ("valid", 0.02),
    ("byte_flip", 0.08),
    ("truncate", 0.04),
    ("proto_field", 0.22),
    ("elem_type", 0.04),
    ("io_dims", 0.05),
    ("io_type", 0.03),
    ("initializer", 0.08),
    ("attribute", 0.08),
    ("node_io", 0.08),
    ("opset", 0.03),
    ("subgraph", 0.04),
    ("sparse", 0.03),
    ("external", 0.03),
    ("loop_trip", 0.02),
    ("call", 0.13),
]


@dataclasses.dataclass
class Case:
    """One generated case: the data to load, how to call it, and what was done."""

    seed: int
    index: int
    kind: str
    mutations: list[str]
    data: bytes  # serialized model
    files: dict[str, bytes]
    args: tuple
    kwargs: dict[str, Any]
    via: str  # "path", "bytes" or "proto"
    apply: bool  # model.apply (eager) instead of model(...) (jitted)

    def describe(self) -> str:
        how = "model.apply" if self.apply else "model(...)"
        return (
            f"seed {self.seed} case {self.index}: {self.kind} via {self.via}, {how}: "
            + "; ".join(self.mutations)
        )


def make_case(seed: int, index: int) -> Case:
    """Case ``index`` of ``seed``: deterministic."""
    rng = np.random.default_rng([seed, index])
    kind = str(rng.choice(sorted(SEEDS)))
    base = SEEDS[kind]()
    model = onnx.ModelProto()
    model.CopyFrom(base.model)
    mut = Mutator(rng, base)
    names = [f for f, _ in FAMILIES]
    weights = np.array([w for _, w in FAMILIES])
    family = str(rng.choice(names, p=weights / weights.sum()))
    done: list[str] = []
    args: tuple = ()
    kwargs: dict[str, Any] = dict(base.feeds)
    data: bytes | None = None
    if family == "call":
        args, kwargs, what = mut.call(base.feeds)
        done.append(what)
    elif family not in ("valid", "byte_flip", "truncate"):
        for _ in range(1 + int(rng.random() < 0.25) + int(rng.random() < 0.1)):
            fam = family if not done else str(rng.choice(names[3:-1]))
            for _attempt in range(5):
                trial = onnx.ModelProto()
                trial.CopyFrom(model)
                try:
                    what = getattr(mut, fam)(trial)
                    trial.SerializeToString()
                except (ValueError, TypeError, IndexError, OverflowError) as e:
                    what = f"(mutation {fam} not applicable: {type(e).__name__})"
                    continue
                model = trial
                done.append(what)
                break
        if rng.random() < 0.1:
            args, kwargs, what = mut.call(base.feeds)
            done.append(what)
    data = model.SerializeToString()
    if family == "byte_flip":
        b = bytearray(data)
        flips = int(rng.integers(1, 9))
        for _ in range(flips):
            b[int(rng.integers(len(b)))] = int(rng.integers(256))
        data = bytes(b)
        done.append(f"{flips} random bytes overwritten")
    elif family == "truncate":
        cut = int(rng.integers(len(data)))
        data = data[:cut]
        done.append(f"truncated to {cut} of {len(model.SerializeToString())} bytes")
    if not done:
        done.append("unmutated")
    via = "path" if base.files or rng.random() < 0.2 else str(rng.choice(["bytes", "proto"]))
    return Case(
        seed, index, kind, done, data, dict(base.files), args, kwargs, via, bool(rng.random() < 0.2)
    )


# -- running a case (in a worker) ----------------------------------------------------------------


def run_case(case: Case, workdir: str, reraise: bool = False) -> dict[str, Any]:
    """Load and call; classify what happened. Never raises (unless ``reraise``, for a foreign one)."""
    import jax

    import onnx2jax

    folder = os.path.join(workdir, f"case{case.index}")
    try:
        if case.via == "path":
            os.makedirs(folder, exist_ok=True)
            for name, blob in case.files.items():
                with open(os.path.join(folder, name), "wb") as f:
                    f.write(blob)
            outside = os.path.join(workdir, "outside.bin")
            with open(outside, "wb") as f:
                f.write(b"\x00" * 64)
            if not os.path.lexists(os.path.join(folder, "link.bin")):
                os.symlink(outside, os.path.join(folder, "link.bin"))
            path = os.path.join(folder, "model.onnx")
            with open(path, "wb") as f:
                f.write(case.data)
            source: Any = path
        elif case.via == "proto":
            source = onnx.ModelProto()
            try:
                source.ParseFromString(case.data)
            except Exception:  # the parse is not what is under test here: load bytes
                source = case.data
        else:
            source = case.data
        model = onnx2jax.load(source)
        if case.apply:
            outs = model.apply(model.params, *case.args, **case.kwargs)
        else:
            outs = model(*case.args, **case.kwargs)
        jax.block_until_ready(jax.tree_util.tree_leaves(outs))
        return {"outcome": "ok"}
    except onnx2jax.Onnx2JaxError as e:
        return {"outcome": "error", "type": type(e).__name__, "message": str(e)[:300]}
    except MemoryError as e:
        return {"outcome": "oom", "type": "MemoryError", "message": str(e)[:300]}
    except Exception as e:
        if reraise:
            raise
        tb = traceback.extract_tb(e.__traceback__)
        where = [f"{os.path.relpath(f.filename)}:{f.lineno} {f.name}" for f in tb[-4:]]
        return {
            "outcome": "foreign",
            "type": type(e).__name__,
            "message": str(e)[:500],
            "where": where,
        }
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _worker(seed: int, workdir: str) -> None:
    """Read case indices on stdin; answer START/END lines on the original stdout."""
    import warnings

    warnings.simplefilter("ignore")
    proto_out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything a library prints goes to stderr, not into the protocol
    for line in sys.stdin:
        index = int(line)
        case = make_case(seed, index)
        proto_out.write(f"START {index} {json.dumps(case.describe())}\n")
        result = run_case(case, workdir)
        proto_out.write(f"END {index} {json.dumps(result)}\n")


# -- the driver -----------------------------------------------------------------------------


@dataclasses.dataclass
class Report:
    seed: int
    cases: int
    counts: collections.Counter
    failures: list[dict[str, Any]]
    errors_by_type: collections.Counter
    seconds: float

    @property
    def bad(self) -> list[dict[str, Any]]:
        return [f for f in self.failures if f["outcome"] in FAILURES]

    def summary(self) -> str:
        order = ["ok", "error", *FAILURES]
        counts = ", ".join(f"{k}: {self.counts.get(k, 0)}" for k in order)
        errs = ", ".join(f"{k} {v}" for k, v in self.errors_by_type.most_common())
        return f"{self.cases} cases (seed {self.seed}) in {self.seconds:.1f} s: {counts}\n  errors raised: {errs}"

    def describe_failures(self, limit: int = 30) -> str:
        lines = []
        for f in self.bad[:limit]:
            lines.append(f"- [{f['outcome']}] {f['case']}")
            if f.get("type"):
                lines.append(f"    {f['type']}: {f.get('message', '')}")
            for w in f.get("where", []):
                lines.append(f"      at {w}")
            lines.append(
                f"    reproduce: python tests/fuzz_models.py --seed {f['seed']} --case {f['index']}"
            )
        if len(self.bad) > limit:
            lines.append(f"... and {len(self.bad) - limit} more")
        return "\n".join(lines)


def _limit_memory(limit_bytes: int) -> None:
    """Cap this process's address space (POSIX), so a runaway allocation is a MemoryError."""
    try:
        import resource
    except ImportError:  # not POSIX: no limit
        return
    resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


class _Worker:
    """One worker subprocess; restarted after a crash, a hang or ``recycle`` cases."""

    def __init__(self, seed: int, workdir: str, memory: int, recycle: int):
        self.seed, self.workdir, self.memory, self.recycle = seed, workdir, memory, recycle
        self.proc: subprocess.Popen | None = None
        self.done = 0
        self.buf = b""

    def start(self) -> None:
        env = dict(os.environ)
        env.setdefault("JAX_PLATFORMS", "cpu")
        env["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
        env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                HERE,
                "--worker",
                "--seed",
                str(self.seed),
                "--workdir",
                self.workdir,
                "--memory-gib",
                str(self.memory / 2**30),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        self.done = 0
        self.buf = b""

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            for f in (self.proc.stdin, self.proc.stdout):
                try:
                    f.close()
                except OSError:
                    pass
        self.proc = None

    def _line(self, deadline: float) -> str | None:
        """The next protocol line, or None at EOF / past the deadline."""
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            sel = selectors.DefaultSelector()
            sel.register(fd, selectors.EVENT_READ)
            ready = sel.select(left)
            sel.close()
            if not ready:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                return None
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode()

    def run(self, index: int, timeout: float, startup: float) -> dict[str, Any]:
        if self.proc is None or self.done >= self.recycle:
            self.stop()
            self.start()
        assert self.proc is not None and self.proc.stdin is not None
        first = self.done == 0
        self.done += 1
        try:
            self.proc.stdin.write(f"{index}\n".encode())
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass
        describe = None
        deadline = time.monotonic() + timeout + (startup if first else 0)
        while True:
            line = self._line(deadline)
            if line is None:
                break
            tag, _, rest = line.partition(" ")
            idx, _, payload = rest.partition(" ")
            if int(idx) != index:
                continue
            if tag == "START":
                describe = json.loads(payload)
                continue
            result = json.loads(payload)
            result["case"] = describe
            return result
        try:  # at EOF the worker is exiting: wait for its status; past the deadline, kill it
            code = self.proc.wait(timeout=0 if time.monotonic() >= deadline else 10)
        except subprocess.TimeoutExpired:
            code = None
        self.stop()
        if describe is None:
            describe = make_case(self.seed, index).describe()
        if code is None:
            return {"outcome": "hang", "case": describe, "message": f"no answer in {timeout:.0f} s"}
        # SIGKILL that we did not send: the kernel's OOM killer.
        outcome = "oom" if code == -9 else "crash"
        return {"outcome": outcome, "case": describe, "message": f"worker exit status {code}"}


def run(
    cases: int,
    seed: int = DEFAULT_SEED,
    workers: int = 1,
    timeout: float = 30.0,
    memory_gib: float = 4.0,
    recycle: int = 300,
    start: int = 0,
    progress: bool = False,
) -> Report:
    """Run cases ``start .. start + cases - 1`` of ``seed`` in ``workers`` subprocesses."""
    t0 = time.monotonic()
    todo: queue.Queue[int] = queue.Queue()
    for i in range(start, start + cases):
        todo.put(i)
    results: list[dict[str, Any]] = []
    lock = threading.Lock()
    workdir = tempfile.mkdtemp(prefix="onnx2jax-fuzz-")

    def serve(w: int) -> None:
        sub = os.path.join(workdir, f"w{w}")
        os.makedirs(sub, exist_ok=True)
        worker = _Worker(seed, sub, int(memory_gib * 2**30), recycle)
        try:
            while True:
                try:
                    i = todo.get_nowait()
                except queue.Empty:
                    return
                r = worker.run(i, timeout, startup=120.0)
                r["index"], r["seed"] = i, seed
                with lock:
                    results.append(r)
                    if progress and len(results) % 500 == 0:
                        c = collections.Counter(x["outcome"] for x in results)
                        print(f"  {len(results)}/{cases} {dict(c)}", file=sys.stderr, flush=True)
        finally:
            worker.stop()

    threads = [threading.Thread(target=serve, args=(w,)) for w in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    shutil.rmtree(workdir, ignore_errors=True)
    results.sort(key=lambda r: r["index"])
    counts = collections.Counter(r["outcome"] for r in results)
    errors = collections.Counter(r["type"] for r in results if r["outcome"] == "error")
    failures = [r for r in results if r["outcome"] in FAILURES]
    return Report(seed, cases, counts, failures, errors, time.monotonic() - t0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--cases", type=int, default=1000)
    p.add_argument("--seed", type=int, default=DEFAULT_SEED)
    p.add_argument("--start", type=int, default=0, help="first case index")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per case")
    p.add_argument("--memory-gib", type=float, default=4.0, help="address-space limit per worker")
    p.add_argument("--case", type=int, help="run this one case in-process, with its traceback")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--workdir", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        # Set before jax is imported (no preexec_fn: forking a process that runs JAX threads
        # and then running Python in the child can deadlock).
        _limit_memory(int(a.memory_gib * 2**30))
        _worker(a.seed, a.workdir)
        return 0
    if a.case is not None:
        case = make_case(a.seed, a.case)
        print(case.describe())
        with tempfile.TemporaryDirectory() as d:
            result = run_case(case, d, reraise=True)  # a foreign exception shows its traceback
        print(json.dumps(result, indent=2))
        return int(result["outcome"] in FAILURES)
    report = run(a.cases, a.seed, a.workers, a.timeout, a.memory_gib, start=a.start, progress=True)
    print(report.summary())
    if report.bad:
        print(report.describe_failures(limit=100))
    return int(bool(report.bad))


if __name__ == "__main__":
    sys.exit(main())
