"""Signal ops (ops/signal.py) against onnx's reference: DFT, STFT, windows, MelWeightMatrix."""

import numpy as np
import pytest
from op_check import check_node

rng = np.random.default_rng(0)


def sig(*shape):
    return rng.standard_normal(shape).astype(np.float32)


TOL = {"rtol": 1e-4, "atol": 1e-4}


@pytest.mark.parametrize("complex_in", [False, True])
@pytest.mark.parametrize("axis", [1, 2, -2])
@pytest.mark.parametrize("length", [None, 6, 13])
@pytest.mark.parametrize("onesided", [0, 1])
def test_dft_forward(complex_in, axis, length, onesided):
    if onesided and complex_in:
        pytest.skip("a one-sided forward DFT takes a real signal")
    x = sig(2, 8, 9, 2 if complex_in else 1)
    n = None if length is None else np.array(length, np.int64)
    check_node(
        "DFT",
        {"x": x, "n": n, "axis": np.array(axis, np.int64)},
        {"onesided": onesided},
        opset=20,
        constants=["n", "axis"],
        **TOL,
    )
    if axis > 0:
        check_node(
            "DFT",
            {"x": x, "n": n},
            {"axis": axis, "onesided": onesided},
            opset=17,
            constants=["n"],
            **TOL,
        )


@pytest.mark.parametrize("axis", [1, 2])
@pytest.mark.parametrize("length", [None, 7, 10])
@pytest.mark.parametrize("onesided", [0, 1])
def test_dft_inverse(axis, length, onesided):
    x = sig(2, 8, 6, 2)
    n = None if length is None else np.array(length, np.int64)
    check_node(
        "DFT",
        {"x": x, "n": n, "axis": np.array(axis, np.int64)},
        {"inverse": 1, "onesided": onesided},
        opset=20,
        constants=["n", "axis"],
        **TOL,
    )


def test_dft_real_spectrum_is_exact_at_dc_and_nyquist():
    x = np.arange(20, dtype=np.float32).reshape(1, 20, 1)
    out = check_node("DFT", {"x": x}, {"axis": 1}, opset=17, **TOL)[0]
    assert out[0, 0, 1] == 0 and out[0, 10, 1] == 0


def test_dft_default_axis_opset20_and_float64():
    check_node("DFT", {"x": sig(3, 10, 1).astype(np.float64)}, opset=20, x64=True)


@pytest.mark.parametrize("with_window", [False, True])
@pytest.mark.parametrize("onesided", [0, 1])
@pytest.mark.parametrize("complex_in", [False, True])
def test_stft(with_window, onesided, complex_in):
    if onesided and complex_in:
        pytest.skip("one-sided output needs a real signal")
    x = sig(2, 64, 2 if complex_in else 1)
    window = np.hanning(16).astype(np.float32) if with_window else None
    inputs = {
        "x": x,
        "step": np.array(6, np.int64),
        "window": window,
        "length": np.array(16, np.int64),
    }
    check_node(
        "STFT", inputs, {"onesided": onesided}, opset=17, constants=["step", "length"], **TOL
    )


def test_stft_frame_length_from_window():
    inputs = {
        "x": sig(1, 50, 1),
        "step": np.array(8, np.int64),
        "window": np.hamming(10).astype(np.float32),
    }
    check_node("STFT", inputs, opset=17, constants=["step"], **TOL)


@pytest.mark.parametrize("op", ["HannWindow", "HammingWindow", "BlackmanWindow"])
@pytest.mark.parametrize("periodic", [0, 1])
@pytest.mark.parametrize("output_datatype", [1, 11, 10])
def test_windows(op, periodic, output_datatype):
    out = check_node(
        op,
        {"size": np.array(10, np.int32)},
        {"periodic": periodic, "output_datatype": output_datatype},
        opset=17,
        x64=True,
        rtol=1e-3,
        atol=1e-3,
    )[0]
    assert out.shape == (10,)


@pytest.mark.parametrize(
    "bins,n_fft,rate,lo,hi",
    [(8, 16, 8192, 0.0, 4096.0), (20, 512, 16000, 125.0, 7600.0), (3, 6, 100, 10.0, 40.0)],
)
def test_mel_weight_matrix(bins, n_fft, rate, lo, hi):
    inputs = {
        "bins": np.array(bins, np.int64),
        "n": np.array(n_fft, np.int64),
        "rate": np.array(rate, np.int64),
        "lo": np.array(lo, np.float32),
        "hi": np.array(hi, np.float32),
    }
    out = check_node("MelWeightMatrix", inputs, opset=17, constants=list(inputs))[0]
    assert out.shape == (n_fft // 2 + 1, bins) and out.max() == 1.0
    check_node(
        "MelWeightMatrix",
        inputs,
        {"output_datatype": 11},
        opset=17,
        constants=list(inputs),
        x64=True,
    )
