"""MatMul, Gemm, Einsum and Det against the ONNX reference (and onnxruntime), old and new opsets."""

import numpy as np
import pytest
from op_check import check_node, node_model

import onnx2jax
from onnx2jax._registry import lookup

rng = np.random.default_rng(0)


def randn(*shape, dtype=np.float32):
    return rng.standard_normal(shape).astype(dtype)


@pytest.mark.parametrize(
    "sa,sb",
    [
        ((3, 4), (4, 5)),
        ((2, 3, 4), (4, 5)),
        ((4,), (4, 5)),
        ((3, 4), (4,)),
        ((4,), (4,)),
        ((2, 1, 3, 4), (5, 4, 2)),
        ((1, 4), (3, 4, 2)),
        ((0, 4), (4, 3)),
        ((3, 0), (0, 2)),
    ],
)
@pytest.mark.parametrize("opset", [1, 9, 13])
def test_matmul_shapes(sa, sb, opset):
    check_node("MatMul", {"a": randn(*sa), "b": randn(*sb)}, opset=opset, rtol=1e-5, atol=1e-5)


def test_matmul_dtypes():
    out = check_node(
        "MatMul",
        {"a": randn(2, 8, 16, dtype=np.float16), "b": randn(16, 4, dtype=np.float16)},
        rtol=1e-2,
        atol=1e-2,
    )
    assert out[0].dtype == np.float16  # float16 stays float16
    check_node(
        "MatMul",
        {"a": randn(3, 4, dtype=np.float64), "b": randn(4, 2, dtype=np.float64)},
        x64=True,
        rtol=1e-12,
        atol=1e-12,
    )
    ia, ib = rng.integers(-9, 9, (3, 4)), rng.integers(-9, 9, (4, 2))
    for dt in (np.int32, np.int64, np.uint32):
        check_node("MatMul", {"a": np.abs(ia).astype(dt), "b": np.abs(ib).astype(dt)}, x64=True)


def test_matmul_static_values_stay_numpy():
    a = np.array([[2**40, 1]], np.int64)
    got = lookup("", "MatMul", 13).fn(a, np.array([[2], [3]], np.int64))
    assert isinstance(got, np.ndarray) and got.tolist() == [[2**41 + 3]]


GEMM_ATTRS = [
    {},
    {"transA": 1},
    {"transB": 1},
    {"transA": 1, "transB": 1, "alpha": 0.25, "beta": 0.5},
    {"alpha": 2.0},
    {"beta": 0.0},
    {"beta": -1.5},
]


@pytest.mark.parametrize("attrs", GEMM_ATTRS)
@pytest.mark.parametrize("c_shape", [None, (5,), (3, 5), (1, 5), (3, 1), (1,), ()])
def test_gemm(attrs, c_shape):
    a = randn(*((4, 3) if attrs.get("transA") else (3, 4)))
    b = randn(*((5, 4) if attrs.get("transB") else (4, 5)))
    c = None if c_shape is None else randn(*c_shape)
    check_node("Gemm", {"a": a, "b": b, "c": c}, attrs, opset=13, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("opset", [6, 7, 9, 11, 13])
def test_gemm_opsets(opset):
    a, b, c = randn(4, 3), randn(5, 4), randn(3, 5)
    attrs = {"transA": 1, "transB": 1, "alpha": 0.5, "beta": 2.0}
    if opset < 7:
        # The old attribute is accepted; shapes already agree. (beta 1: the reference drops
        # beta when broadcast=0, against the spec.)
        attrs.update(broadcast=0, beta=1.0)
    check_node("Gemm", {"a": a, "b": b, "c": c}, attrs, opset=opset, rtol=1e-5, atol=1e-5)
    if opset < 7:
        attrs["broadcast"] = 1
        check_node(
            "Gemm", {"a": a, "b": b, "c": randn(5)}, attrs, opset=opset, rtol=1e-5, atol=1e-5
        )


def test_gemm_c_optional_since_11_and_constant_weights():
    a, b, c = randn(2, 4), randn(4, 3), randn(3)
    check_node("Gemm", {"a": a, "b": b}, opset=11)
    check_node("Gemm", {"a": a, "b": b, "c": c}, {"transB": 0}, opset=13, constants=["b", "c"])


def test_gemm_dtypes():
    a, b, c = (
        randn(3, 8, dtype=np.float16),
        randn(8, 4, dtype=np.float16),
        randn(4, dtype=np.float16),
    )
    out = check_node(
        "Gemm", {"a": a, "b": b, "c": c}, {"alpha": 0.5, "beta": 2.0}, rtol=1e-2, atol=1e-2
    )
    assert out[0].dtype == np.float16
    ia, ib, ic = (rng.integers(-9, 9, s).astype(np.int32) for s in ((3, 4), (4, 2), (2,)))
    check_node("Gemm", {"a": ia, "b": ib, "c": ic})
    check_node("Gemm", {"a": ia, "b": ib, "c": ic}, {"alpha": 2.0, "beta": 3.0})
    check_node("Gemm", {"a": ia.astype(np.int64), "b": ib.astype(np.int64)}, x64=True)


def test_gemm_beta_zero_ignores_c():
    # The reference skips C when beta == 0, so inf/nan in C does not leak into Y.
    c = np.full((3, 2), np.inf, np.float32)
    check_node("Gemm", {"a": randn(3, 4), "b": randn(4, 2), "c": c}, {"beta": 0.0})


@pytest.mark.parametrize(
    "eq,shapes",
    [
        ("ij,jk->ik", [(3, 4), (4, 5)]),
        ("ij,jk", [(3, 4), (4, 5)]),  # implicit output
        ("bij , bjk -> bik", [(2, 3, 4), (2, 4, 5)]),  # spaces
        ("ii->i", [(4, 4)]),  # diagonal
        ("ii", [(4, 4)]),  # trace (implicit, scalar)
        ("...ij->...ji", [(2, 3, 4, 5)]),  # ellipsis transpose
        ("...ii->...i", [(3, 5, 5)]),  # batch diagonal
        ("i,i", [(5,), (5,)]),  # inner product
        ("i,j->ij", [(3,), (4,)]),  # outer product
        ("ij->", [(3, 4)]),  # sum
        ("Ab,bC->CA", [(3, 4), (4, 2)]),  # upper case labels
        ("bA,bB", [(3, 4), (3, 2)]),  # implicit order: uppercase first
        ("ab,bc,cd->ad", [(2, 3), (3, 4), (4, 5)]),  # three operands
        (",i->i", [(), (3,)]),  # scalar operand
    ],
)
def test_einsum(eq, shapes):
    inputs = {f"x{i}": randn(*s) for i, s in enumerate(shapes)}
    check_node("Einsum", inputs, {"equation": eq}, opset=12, rtol=1e-5, atol=1e-5)


def test_einsum_dtypes():
    check_node(
        "Einsum",
        {"a": randn(2, 3, 8, dtype=np.float16), "b": randn(2, 8, 4, dtype=np.float16)},
        {"equation": "bij,bjk->bik"},
        rtol=1e-2,
        atol=1e-2,
    )
    import ml_dtypes

    bf = ml_dtypes.bfloat16
    check_node(
        "Einsum",
        {"a": randn(3, 8).astype(bf), "b": randn(8, 4).astype(bf)},
        {"equation": "ij,jk->ik"},
        opset=28,
        rtol=1e-2,
        atol=1e-2,
    )
    ia, ib = (
        rng.integers(-9, 9, (3, 4)).astype(np.int32),
        rng.integers(-9, 9, (4,)).astype(np.int32),
    )
    check_node("Einsum", {"a": ia, "b": ib}, {"equation": "ij,j->i"})


@pytest.mark.parametrize("shape", [(3, 3), (2, 4, 4), (2, 1, 2, 2), (1, 1)])
def test_det(shape):
    check_node("Det", {"x": randn(*shape)}, opset=11, rtol=1e-4, atol=1e-5)
    check_node(
        "Det", {"x": randn(*shape, dtype=np.float64)}, opset=22, x64=True, rtol=1e-10, atol=1e-12
    )


def test_det_float16_via_float32():
    x = randn(2, 3, 3)
    m = onnx2jax.load(node_model("Det", {"x": x.astype(np.float16)}, opset=22))
    got = np.asarray(m(x.astype(np.float16))[0])
    assert got.dtype == np.float16
    np.testing.assert_allclose(
        got, np.linalg.det(x.astype(np.float16).astype(np.float32)), rtol=1e-2, atol=1e-2
    )
