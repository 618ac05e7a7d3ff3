"""Element-wise math, comparisons, logic, bitwise ops and casts against onnx's reference."""

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx.reference import ReferenceEvaluator
from op_check import check_node, node_model

import onnx2jax
from onnx2jax._dtypes import to_onnx_dtype
from onnx2jax._registry import lookup

rng = np.random.default_rng(0)
F16 = {"rtol": 2e-3, "atol": 2e-3}


def randn(*shape, dtype=np.float32):
    return rng.standard_normal(shape).astype(dtype)


def randint(*shape, lo=-20, hi=20, dtype=np.int32):
    return rng.integers(lo, hi, shape).astype(dtype)


def nonzero_int(*shape, dtype=np.int32):
    v = randint(*shape, dtype=dtype)
    return np.where(v == 0, 3, v).astype(dtype)


# -- unary ---------------------------------------------------------------------------------------

UNARY_DOMAIN = {  # op -> a float32 input inside its domain
    "Abs": randn(3, 4),
    "Neg": randn(3, 4),
    "Exp": randn(3, 4),
    "Floor": 3 * randn(3, 4),
    "Ceil": 3 * randn(3, 4),
    "Sign": np.array([-2.0, 0.0, 3.5], np.float32),
    "Log": np.abs(randn(3, 4)) + 0.1,
    "Sqrt": np.abs(randn(3, 4)),
    "Reciprocal": np.abs(randn(3, 4)) + 0.5,
    "Sin": randn(3, 4),
    "Cos": randn(3, 4),
    "Tan": randn(3, 4),
    "Asin": np.tanh(randn(3, 4)),
    "Acos": np.tanh(randn(3, 4)),
    "Atan": randn(3, 4),
    "Sinh": randn(3, 4),
    "Cosh": randn(3, 4),
    "Asinh": randn(3, 4),
    "Acosh": np.abs(randn(3, 4)) + 1.0,
    "Atanh": 0.9 * np.tanh(randn(3, 4)),
    "Erf": randn(3, 4),
}


@pytest.mark.parametrize("op", sorted(UNARY_DOMAIN))
def test_unary_float32(op):
    check_node(op, {"x": UNARY_DOMAIN[op]})


@pytest.mark.parametrize("op", ["Abs", "Neg", "Exp", "Sqrt", "Floor", "Sin", "Erf", "Tanh"])
def test_unary_float16_stays_float16(op):
    x = np.abs(randn(3, 4, dtype=np.float16)) if op == "Sqrt" else randn(3, 4, dtype=np.float16)
    (out,) = check_node(op, {"x": x}, **F16)
    assert out.dtype == np.float16


@pytest.mark.parametrize("op", ["Abs", "Neg", "Exp", "Log", "Sqrt", "Reciprocal", "Floor", "Ceil"])
def test_unary_opset1_consumed_inputs(op):
    x = np.abs(randn(2, 3)) + 0.5
    check_node(op, {"x": x}, {"consumed_inputs": [0]}, opset=1)
    check_node(op, {"x": x}, opset=6)


def test_round_half_to_even():
    x = np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 2.3, -4.6, 0.0, np.inf, np.nan], np.float32)
    check_node("Round", {"x": x})
    check_node("Round", {"x": x.astype(np.float16)})


@pytest.mark.parametrize("dtype", [np.int8, np.int32, np.int64])
@pytest.mark.parametrize("op", ["Abs", "Neg", "Sign"])
def test_unary_integers(op, dtype):
    check_node(op, {"x": randint(3, 4, dtype=dtype)})


@pytest.mark.parametrize("op", ["Abs", "Neg", "Sign"])
def test_unary_static_int64(op):
    x = np.array([-(2**40), -3, 0, 7, 2**40], np.int64)
    check_node(op, {"x": x}, constants=["x"], x64=True)


def test_isnan_isinf():
    x = np.array([1.0, np.nan, np.inf, -np.inf, 0.0, -2.0], np.float32)
    check_node("IsNaN", {"x": x})
    check_node("IsNaN", {"x": x.astype(np.float16)})
    for neg in (0, 1):
        for pos in (0, 1):
            check_node("IsInf", {"x": x}, {"detect_negative": neg, "detect_positive": pos})


# -- binary arithmetic ---------------------------------------------------------------------------

ARITH = ["Add", "Sub", "Mul", "Div"]


@pytest.mark.parametrize("op", ARITH)
@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
def test_arith_float_broadcast(op, dtype):
    tol = F16 if dtype == np.float16 else {}
    # Under jit XLA turns a / broadcast(b) into a * broadcast(1 / b), one float16 ulp off the
    # eager result; the checker holds eager and jit to 1e-5, so float16 Div gets equal shapes.
    b_shape = (2, 3, 4) if (op, dtype) == ("Div", np.float16) else (3, 1)
    out = check_node(
        op, {"a": randn(2, 3, 4, dtype=dtype), "b": randn(*b_shape, dtype=dtype) + 3}, **tol
    )
    if dtype != np.float64:
        assert out[0].dtype == dtype


@pytest.mark.parametrize("op", ARITH)
@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.int32, np.int64, np.uint32])
def test_arith_integers(op, dtype):
    lo = 0 if np.dtype(dtype).kind == "u" else -20
    a = randint(3, 4, lo=lo, dtype=dtype)
    b = randint(4, lo=1, hi=9, dtype=dtype)
    check_node(op, {"a": a, "b": b}, opset=14)


def test_div_integers_truncate_toward_zero():
    a = np.array([7, -7, 7, -7, 6, -6, 0, 1], np.int32)
    b = np.array([2, 2, -2, -2, 4, 4, 5, -3], np.int32)
    check_node("Div", {"a": a, "b": b})
    check_node(
        "Div", {"a": a.astype(np.int64), "b": b.astype(np.int64)}, constants=["a", "b"], x64=True
    )
    check_node("Div", {"a": a.astype(np.int64), "b": b.astype(np.int64)}, reference="ort", x64=True)


@pytest.mark.parametrize("op", ARITH)
def test_arith_static_int64_shape_path(op):
    a = np.array([2**40 + 7, -(2**35) - 3, 12, -12], np.int64)
    b = np.array([3, 7, -5, 5], np.int64)
    check_node(op, {"a": a, "b": b}, constants=["a", "b"], x64=True)
    # one operand static, one traced
    check_node(op, {"a": a, "b": b}, constants=["b"], x64=True)


@pytest.mark.parametrize(
    "op",
    [
        "Add",
        "Sub",
        "Mul",
        "Div",
        "Neg",
        "Abs",
        "Equal",
        "Less",
        "Greater",
        "Max",
        "Min",
        "Where",
        "Not",
        "And",
        "Or",
        "Cast",
    ],
)
def test_shape_path_ops_stay_numpy_int64(op):
    """Ops on the shape path compute static values in numpy, exactly in int64."""
    big = np.array([2**40, -(2**33), 5], np.int64)
    small = np.array([3, -4, 5], np.int64)
    flags = np.array([True, False, True])
    args, attrs, expected = {
        "Add": ((big, small), {}, big + small),
        "Sub": ((big, small), {}, big - small),
        "Mul": ((big, small), {}, big * small),
        "Div": ((big, small), {}, np.array([2**40 // 3, 2**31, 1], np.int64)),
        "Neg": ((big,), {}, -big),
        "Abs": ((big,), {}, np.abs(big)),
        "Equal": ((big, small), {}, big == small),
        "Less": ((big, small), {}, big < small),
        "Greater": ((big, small), {}, big > small),
        "Max": ((big, small), {}, np.maximum(big, small)),
        "Min": ((big, small), {}, np.minimum(big, small)),
        "Where": ((flags, big, small), {}, np.where(flags, big, small)),
        "Not": ((flags,), {}, ~flags),
        "And": ((flags, ~flags), {}, flags & ~flags),
        "Or": ((flags, ~flags), {}, flags | ~flags),
        "Cast": ((big,), {"to": onnx.TensorProto.DOUBLE}, big.astype(np.float64)),
    }[op]
    out = lookup("", op, 21).fn(*args, **attrs)
    assert isinstance(out, (np.ndarray, np.generic)), type(out)
    assert out.dtype == expected.dtype
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div"])
def test_arith_legacy_broadcast_axis(op):
    a, b = randn(2, 3, 4, 5), randn(3, 4) + 3
    expected = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide}[op](
        a, b[:, :, None]
    )
    m = onnx2jax_load(op, {"a": a, "b": b}, {"broadcast": 1, "axis": 1}, opset=6)
    np.testing.assert_allclose(np.asarray(m(a=a, b=b)[0]), expected, rtol=1e-6)
    # trailing alignment (no axis), which numpy broadcasting also gives
    check_node(op, {"a": a, "b": randn(5) + 3}, {"broadcast": 1}, opset=6)
    check_node(op, {"a": a, "b": a + 3}, {"consumed_inputs": [0, 0]}, opset=1)


def check_bits(op, inputs, attrs, opset, constants=()):
    """Like check_node, for float8 outputs: compares bit patterns (any NaN equals any NaN, but
    -0 differs from 0), jitted and eager."""
    model = node_model(op, inputs, attrs, opset=opset, constants=constants)
    feeds = {k: v for k, v in inputs.items() if k not in constants}
    (expected,) = ReferenceEvaluator(model).run(None, feeds)
    m = onnx2jax.load(model)
    for got in (m(**feeds)[0], m.apply(m.params, **feeds)[0]):
        got = np.asarray(got)
        assert got.dtype == expected.dtype and got.shape == expected.shape
        nan = np.isnan(expected.astype(np.float32))
        np.testing.assert_array_equal(np.isnan(got.astype(np.float32)), nan)
        np.testing.assert_array_equal(got.view(np.uint8)[~nan], expected.view(np.uint8)[~nan])
    return expected


def onnx2jax_load(op, inputs, attrs, opset):
    return onnx2jax.load(node_model(op, inputs, attrs, opset=opset))


def test_pow_mixed_types():
    base = np.abs(randn(3, 4)) + 0.5
    check_node("Pow", {"x": base, "y": randn(3, 4)})
    check_node("Pow", {"x": base, "y": np.array(3, np.int64)})
    check_node("Pow", {"x": base, "y": randint(4, lo=0, hi=4)}, opset=12)
    check_node("Pow", {"x": randint(3, 4, lo=-5, hi=5), "y": randint(4, lo=0, hi=4)})
    check_node(
        "Pow", {"x": randint(3, 4, lo=0, hi=6), "y": np.array([0.5, 2.0], np.float32)[[0, 1, 1, 0]]}
    )
    check_node("Pow", {"x": base.astype(np.float16), "y": np.array(2.0, np.float32)}, **F16)
    y = randn(4)
    m = onnx2jax_load("Pow", {"x": base, "y": y}, {"broadcast": 1}, opset=6)
    np.testing.assert_allclose(np.asarray(m(x=base, y=y)[0]), np.power(base, y), rtol=1e-5)
    check_node("Pow", {"x": base, "y": randn(4)}, opset=7)


@pytest.mark.parametrize("fmod", [0, 1])
@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.int8, np.uint16])
def test_mod_integers(fmod, dtype):
    lo = 0 if np.dtype(dtype).kind == "u" else -20
    a = randint(4, 5, lo=lo, dtype=dtype)
    b = nonzero_int(5, dtype=dtype) if lo else randint(5, lo=1, hi=9, dtype=dtype)
    check_node("Mod", {"a": a, "b": b}, {"fmod": fmod})
    check_node("Mod", {"a": a, "b": b}, {"fmod": fmod}, opset=10)


def test_mod_floats_and_static():
    a, b = 5 * randn(3, 4), randn(4) + 3
    check_node("Mod", {"a": a, "b": b}, {"fmod": 1})
    check_node("Mod", {"a": a.astype(np.float16), "b": b.astype(np.float16)}, {"fmod": 1}, **F16)
    check_node("Mod", {"a": a, "b": b}, {"fmod": 0}, opset=28)
    ai, bi = np.array([2**40 + 5, -7, 7], np.int64), np.array([3, 3, -3], np.int64)
    for fmod in (0, 1):
        check_node("Mod", {"a": ai, "b": bi}, {"fmod": fmod}, constants=["a", "b"], x64=True)


# -- comparisons, logic, bitwise -----------------------------------------------------------------

COMPARE = ["Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual"]


@pytest.mark.parametrize("op", COMPARE)
@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.int32, np.int64, np.uint8])
def test_compare(op, dtype):
    a = randint(3, 4, lo=0, hi=4).astype(dtype)
    b = randint(4, lo=0, hi=4).astype(dtype)
    (out,) = check_node(op, {"a": a, "b": b})
    assert out.dtype == np.bool_


@pytest.mark.parametrize("op", COMPARE)
def test_compare_static_int64(op):
    a, b = np.array([2**40, 5, -3], np.int64), np.array([2**40 + 1, 5, -4], np.int64)
    check_node(op, {"a": a, "b": b}, constants=["a", "b"])


@pytest.mark.parametrize("op", ["Equal", "Less", "Greater"])
def test_compare_legacy(op):
    a, b = randint(2, 3, 4, lo=0, hi=3), randint(3, lo=0, hi=3)
    m = onnx2jax_load(op, {"a": a, "b": b}, {"broadcast": 1, "axis": 1}, opset=6)
    expected = {"Equal": np.equal, "Less": np.less, "Greater": np.greater}[op](a, b[:, None])
    np.testing.assert_array_equal(np.asarray(m(a=a, b=b)[0]), expected)
    check_node(op, {"a": a, "b": b[:, None].repeat(4, 1)}, opset=7)


def test_equal_bool():
    check_node("Equal", {"a": rng.random((3, 4)) > 0.5, "b": rng.random(4) > 0.5}, opset=11)


@pytest.mark.parametrize("op", ["And", "Or", "Xor"])
def test_logic(op):
    a, b = rng.random((2, 3, 4)) > 0.5, rng.random((3, 4)) > 0.5
    check_node(op, {"a": a, "b": b})
    check_node(op, {"a": a, "b": b[0]}, {"broadcast": 1}, opset=1)
    check_node(op, {"a": a, "b": b}, constants=["a", "b"])


def test_not():
    x = rng.random((3, 4)) > 0.5
    check_node("Not", {"x": x})
    check_node("Not", {"x": x}, constants=["x"])


@pytest.mark.parametrize("op", ["BitwiseAnd", "BitwiseOr", "BitwiseXor"])
@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.int32, np.uint64, np.int64])
def test_bitwise(op, dtype):
    info = np.iinfo(dtype)
    lo, hi = max(int(info.min), -1000), min(int(info.max), 1000)
    check_node(
        op,
        {"a": randint(3, 4, lo=lo, hi=hi, dtype=dtype), "b": randint(4, lo=lo, hi=hi, dtype=dtype)},
    )


@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.int32, np.uint16])
def test_bitwise_not(dtype):
    info = np.iinfo(dtype)
    check_node(
        "BitwiseNot",
        {
            "x": randint(
                3, 4, lo=max(int(info.min), -1000), hi=min(int(info.max), 1000), dtype=dtype
            )
        },
    )


@pytest.mark.parametrize("direction", ["LEFT", "RIGHT"])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32, np.uint64])
def test_bitshift_unsigned(direction, dtype):
    x = np.array([1, 4, 200, 255, 17, 3], dtype)
    y = np.array([1, 2, 3, 0, 4, 1], dtype)
    check_node("BitShift", {"x": x, "y": y}, {"direction": direction}, opset=11)


@pytest.mark.parametrize("direction", ["LEFT", "RIGHT"])
@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.int64])
def test_bitshift_signed_and_out_of_range(direction, dtype):
    bits = np.iinfo(dtype).bits
    x = np.array([1, -1, -100, 100, 64, -64, 5, -5], dtype)
    y = np.array([1, 3, 2, bits, bits + 3, -1, 0, bits - 1], dtype)
    check_node("BitShift", {"x": x, "y": y}, {"direction": direction}, opset=28, x64=True)


# -- variadic, Where, Clip -----------------------------------------------------------------------


@pytest.mark.parametrize("op", ["Sum", "Max", "Min", "Mean"])
def test_variadic(op):
    xs = {"a": randn(2, 3, 4), "b": randn(3, 1), "c": randn(4)}
    check_node(op, xs)
    check_node(op, {"a": xs["a"]})
    check_node(op, {k: v.astype(np.float16) for k, v in xs.items()}, **F16)
    same = {"a": xs["a"], "b": randn(2, 3, 4)}
    check_node(op, same, opset=6)
    m = onnx2jax_load(op, same, {"consumed_inputs": [0, 0]}, opset=1)
    expected = {
        "Sum": np.add,
        "Max": np.maximum,
        "Min": np.minimum,
        "Mean": lambda a, b: (a + b) / 2,
    }[op](same["a"], same["b"])
    np.testing.assert_allclose(np.asarray(m(**same)[0]), expected, rtol=1e-6)


@pytest.mark.parametrize("op", ["Max", "Min"])
def test_max_min_integers_and_nan(op):
    check_node(op, {"a": randint(3, 4, dtype=np.int64), "b": randint(4, dtype=np.int64)})
    check_node(
        op,
        {
            "a": randint(3, 4, dtype=np.uint8, lo=0, hi=200),
            "b": randint(4, dtype=np.uint8, lo=0, hi=200),
        },
    )
    a = np.array([1.0, np.nan, 3.0], np.float32)
    check_node(op, {"a": a, "b": np.array([np.nan, 2.0, 1.0], np.float32)})
    big = np.array([2**40, -(2**40), 3], np.int64)
    check_node(op, {"a": big, "b": np.array([1, 2, 3], np.int64)}, constants=["a", "b"], x64=True)


def test_where():
    c = rng.random((3, 1)) > 0.5
    check_node("Where", {"c": c, "x": randn(3, 4), "y": randn(4)})
    check_node(
        "Where",
        {"c": c, "x": randint(3, 4, dtype=np.int64), "y": randint(1, dtype=np.int64)},
        opset=9,
    )
    check_node(
        "Where", {"c": c, "x": randn(3, 4, dtype=np.float16), "y": randn(4, dtype=np.float16)}
    )
    check_node(
        "Where",
        {
            "c": np.array([True, False]),
            "x": np.array([2**40, 1], np.int64),
            "y": np.array([-1, -(2**41)], np.int64),
        },
        constants=["c", "x", "y"],
        x64=True,
    )


def test_clip_opset6_attributes():
    x = 3 * randn(3, 4)
    check_node("Clip", {"x": x}, {"min": -1.0, "max": 0.5}, opset=6)
    check_node("Clip", {"x": x}, {"min": -1.0}, opset=6)
    check_node("Clip", {"x": x}, opset=6)
    check_node("Clip", {"x": x.astype(np.float16)}, {"min": -1.0, "max": 0.5}, opset=6, **F16)


def test_clip_opset1_attributes():
    x = 3 * randn(3, 4)
    m = onnx2jax_load("Clip", {"x": x}, {"min": -1.0, "max": 0.5, "consumed_inputs": [0]}, opset=1)
    np.testing.assert_array_equal(np.asarray(m(x=x)[0]), np.clip(x, -1.0, 0.5))
    m = onnx2jax_load("Clip", {"x": x}, {"max": 0.5}, opset=1)
    np.testing.assert_array_equal(np.asarray(m(x=x)[0]), np.minimum(x, 0.5))


def test_clip_inputs():
    x = 3 * randn(3, 4)
    lo, hi = np.array(-1.0, np.float32), np.array(0.5, np.float32)
    check_node("Clip", {"x": x, "min": lo, "max": hi}, opset=11)
    check_node("Clip", {"x": x, "min": None, "max": hi})
    check_node("Clip", {"x": x, "min": lo, "max": None})
    check_node("Clip", {"x": x, "min": None, "max": None})
    check_node("Clip", {"x": x, "min": hi, "max": lo})  # min > max: everything becomes max
    check_node("Clip", {"x": x, "min": lo, "max": hi}, constants=["min", "max"])
    xi = randint(3, 4, dtype=np.int64)
    check_node(
        "Clip", {"x": xi, "min": np.array(-3, np.int64), "max": np.array(5, np.int64)}, opset=12
    )
    check_node(
        "Clip",
        {
            "x": randint(3, 4, lo=0, hi=250, dtype=np.uint8),
            "min": np.array(10, np.uint8),
            "max": None,
        },
    )
    check_node(
        "Clip",
        {"x": x.astype(np.float16), "min": lo.astype(np.float16), "max": hi.astype(np.float16)},
        **F16,
    )


# -- casts ---------------------------------------------------------------------------------------

NUMERIC = [
    np.float32,
    np.float16,
    np.float64,
    np.int8,
    np.int16,
    np.int32,
    np.int64,
    np.uint8,
    np.uint16,
    np.uint32,
    np.uint64,
    np.bool_,
]


@pytest.mark.parametrize("dst", NUMERIC)
@pytest.mark.parametrize("src", NUMERIC)
def test_cast_numeric_pairs(src, dst):
    x = np.array([[0.0, 1.0, -1.0, 2.7, -2.7], [100.4, 3.5, -0.0, 0.25, 60.0]], np.float32)
    if np.dtype(src).kind == "u" or np.dtype(dst).kind == "u":
        x = np.abs(x)  # negative floats to unsigned ints are undefined (tested below for < 32 bits)
    x = x.astype(src)
    (out,) = check_node("Cast", {"x": x}, {"to": to_onnx_dtype(np.dtype(dst))}, x64=True)
    assert out.dtype == dst


@pytest.mark.parametrize("dst", [np.int8, np.uint8, np.int16])
def test_cast_float_out_of_range_wraps_like_onnxruntime(dst):
    x = np.array([200.0, -200.0, 300.0, 70000.0, -1.0], np.float32)
    check_node("Cast", {"x": x}, {"to": to_onnx_dtype(np.dtype(dst))})
    check_node("Cast", {"x": x}, {"to": to_onnx_dtype(np.dtype(dst))}, reference="ort")


def test_cast_opsets_and_bfloat16():
    x = randn(3, 4)
    check_node("Cast", {"x": x}, {"to": onnx.TensorProto.FLOAT16}, opset=6, **F16)
    check_node("Cast", {"x": x}, {"to": onnx.TensorProto.INT32}, opset=9)
    check_node("Cast", {"x": x}, {"to": onnx.TensorProto.BFLOAT16}, opset=13)
    bf = x.astype(ml_dtypes.bfloat16)
    check_node("Cast", {"x": bf}, {"to": onnx.TensorProto.FLOAT}, opset=13)
    check_node("Cast", {"x": bf}, {"to": onnx.TensorProto.INT64}, opset=21)


def test_cast_opset1_type_name():
    x = np.array([1.7, -2.2, 0.0], np.float32)
    for name, dtype in [("INT32", np.int32), ("FLOAT16", np.float16), ("BOOL", np.bool_)]:
        m = onnx2jax_load("Cast", {"x": x}, {"to": name}, opset=1)
        out = np.asarray(m(x=x)[0])
        assert out.dtype == dtype
        np.testing.assert_array_equal(out, x.astype(dtype))


def test_cast_static_int64_exact():
    x = np.array([2**40 + 1, -(2**50), 7], np.int64)
    check_node("Cast", {"x": x}, {"to": onnx.TensorProto.DOUBLE}, constants=["x"], x64=True)
    check_node("Cast", {"x": x}, {"to": onnx.TensorProto.INT32}, constants=["x"])
    check_node("Cast", {"x": x}, {"to": onnx.TensorProto.INT64}, constants=["x"], x64=True)


FLOAT8 = [
    onnx.TensorProto.FLOAT8E4M3FN,
    onnx.TensorProto.FLOAT8E4M3FNUZ,
    onnx.TensorProto.FLOAT8E5M2,
    onnx.TensorProto.FLOAT8E5M2FNUZ,
]


@pytest.mark.parametrize("saturate", [0, 1])
@pytest.mark.parametrize("to", FLOAT8)
@pytest.mark.parametrize("src", [np.float32, np.float16])
def test_cast_float8_saturate(to, saturate, src):
    x = np.array(
        [
            0.0,
            -0.0,
            0.3,
            -1.7,
            240.0,
            300.0,
            448.0,
            500.0,
            -1e4,
            6e4,
            np.inf,
            -np.inf,
            np.nan,
            1e-7,
        ],
        np.float32,
    ).astype(src)
    out = check_bits("Cast", {"x": x}, {"to": to, "saturate": saturate}, opset=19)
    back = out.astype(np.float32)
    check_node("Cast", {"x": out}, {"to": onnx.TensorProto.FLOAT}, opset=19)
    if saturate:
        assert not np.isinf(back).any()


@pytest.mark.parametrize(
    "to",
    [
        onnx.TensorProto.INT4,
        onnx.TensorProto.UINT4,
        onnx.TensorProto.INT2,
        onnx.TensorProto.UINT2,
        onnx.TensorProto.FLOAT4E2M1,
    ],
)
def test_cast_sub_byte(to):
    x = np.arange(-9, 16).astype(np.float32) / (4 if to == onnx.TensorProto.FLOAT4E2M1 else 1)
    (out,) = check_node("Cast", {"x": x}, {"to": to}, opset=25)
    check_node("Cast", {"x": out}, {"to": onnx.TensorProto.FLOAT}, opset=25)
    check_node("Cast", {"x": np.arange(-9, 16).astype(np.int32)}, {"to": to}, opset=25)


@pytest.mark.parametrize("round_mode", ["up", "down", "nearest"])
@pytest.mark.parametrize("saturate", [0, 1])
def test_cast_float8e8m0(round_mode, saturate):
    x = np.array(
        [1.0, 1.5, 3.0, 0.7, 1e-3, 2.0**127 * 1.5, 3e38, np.inf, np.nan, 0.0, 2.0**-127], np.float32
    )
    attrs = {"to": onnx.TensorProto.FLOAT8E8M0, "saturate": saturate, "round_mode": round_mode}
    out = check_bits("Cast", {"x": x}, attrs, opset=24)
    check_node("Cast", {"x": out}, {"to": onnx.TensorProto.FLOAT}, opset=24)
    check_bits("Cast", {"x": x}, attrs, opset=24, constants=["x"])


def test_cast_strings_at_trace_time():
    s = np.array(["1.5", "-2", "INF", "-inf", "NaN", "1e-5", "+INF"], object)
    check_node("Cast", {"s": s}, {"to": onnx.TensorProto.FLOAT}, constants=["s"])
    check_node("Cast", {"s": s}, {"to": onnx.TensorProto.DOUBLE}, constants=["s"], x64=True)
    ints = np.array(["12", "-3", "1099511627776"], object)
    check_node("Cast", {"s": ints}, {"to": onnx.TensorProto.INT64}, constants=["s"], x64=True)
    # number -> string -> number round trip, all at trace time
    num = np.array([1.5, -2.25, 1e10], np.float32)
    text = lookup("", "Cast", 21).fn(num, to=onnx.TensorProto.STRING)
    assert text.dtype == object
    np.testing.assert_array_equal(text, num.astype(np.str_).astype(object))
    back = lookup("", "Cast", 21).fn(text, to=onnx.TensorProto.FLOAT)
    np.testing.assert_array_equal(back, num)


def test_castlike():
    x = randn(3, 4)
    for target in [np.float16, np.int32, np.int64, np.bool_, np.float64, np.uint8]:
        check_node(
            "CastLike",
            {"x": x, "t": np.zeros(1, target)},
            x64=True,
            **(F16 if target == np.float16 else {}),
        )
    check_bits(
        "CastLike",
        {"x": 300 * x, "t": np.zeros(1, ml_dtypes.float8_e4m3fn)},
        {"saturate": 0},
        opset=19,
    )
    check_node("CastLike", {"x": randint(3, 4), "t": np.zeros(1, np.float32)}, opset=15)


@pytest.mark.parametrize(
    "src,dst",
    [
        (np.float32, np.int32),
        (np.int32, np.float32),
        (np.float16, np.int16),
        (np.int8, np.uint8),
        (np.float16, ml_dtypes.bfloat16),
        (np.uint32, np.float32),
        (np.float64, np.int64),
        (np.bool_, np.uint8),
        (np.uint8, np.bool_),
    ],
)
def test_bitcast(src, dst):
    if np.dtype(src) == np.bool_:
        x = rng.random((3, 4)) > 0.5
    elif np.dtype(dst) == np.bool_:
        x = randint(3, 4, lo=0, hi=2, dtype=src)
    elif np.dtype(src).kind == "f":
        x = randn(3, 4, dtype=src)
    else:
        x = randint(3, 4, lo=0 if np.dtype(src).kind == "u" else -100, hi=100, dtype=src)
    (out,) = check_node("BitCast", {"x": x}, {"to": to_onnx_dtype(np.dtype(dst))}, x64=True)
    assert out.dtype == dst
    check_node("BitCast", {"x": x}, {"to": to_onnx_dtype(np.dtype(dst))}, constants=["x"], x64=True)
