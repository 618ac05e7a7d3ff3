"""Parity of real exported models (tests/models/*.onnx) with onnxruntime, jitted and via ``apply``.

The files are checked in (made by ``tests/models/make_models.py``, see its README), so this test
needs onnxruntime but not torch. Every case feeds shapes different from the export-time ones
(batch 2, sequence 8, 32x32 images) to check the dynamic axes really are dynamic.
"""

from __future__ import annotations

import functools
import os

import jax
import numpy as np
import pytest

import onnx2jax

ort = pytest.importorskip("onnxruntime")

MODELS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "models")
VOCAB = 100  # vocabulary of the BERT and GPT-2 models in make_models.py

# Float32 parity, as asked of every exported model: rtol 1e-4. The atol is for values near zero
# (logits and hidden states cross zero, and a few post-ReLU/GELU activations are ~0), where a
# relative bound is meaningless: float32 sums over ~100-1000 terms of size ~1 (conv, matmul,
# layer norm) differ between XLA and onnxruntime by a few ulp of the partial sums, ~1e-6 absolute.
RTOL, ATOL = 1e-4, 1e-5


def image_feeds(batch: int, height: int, width: int):
    rng = np.random.default_rng(batch * 1000 + height + width)
    return {"input": rng.standard_normal((batch, 3, height, width), dtype=np.float32)}


def text_feeds(batch: int, seq: int, token_types: bool):
    rng = np.random.default_rng(batch * 100 + seq)
    feeds = {"input_ids": rng.integers(0, VOCAB, (batch, seq), dtype=np.int64)}
    mask = np.ones((batch, seq), dtype=np.int64)
    if batch > 1:
        mask[1, seq - 3 :] = 0  # right padding
    if batch > 2:
        mask[2, :2] = 0  # left padding (as used for generation)
    feeds["attention_mask"] = mask
    if token_types:
        tt = np.zeros((batch, seq), dtype=np.int64)
        tt[:, seq // 2 :] = 1  # sentence pair
        feeds["token_type_ids"] = tt
    return feeds


def sequence_feeds(batch: int, seq: int):
    rng = np.random.default_rng(batch * 10 + seq)
    return {"features": rng.standard_normal((batch, seq, 12), dtype=np.float32)}


FAMILIES = {
    # main case (different from export: batch 3, 40x48 images / 11 tokens), second smaller case
    "resnet": (lambda: image_feeds(3, 40, 48), lambda: image_feeds(1, 24, 24)),
    "mobilenet": (lambda: image_feeds(3, 40, 48), lambda: image_feeds(1, 24, 24)),
    "bert": (lambda: text_feeds(3, 11, True), lambda: text_feeds(1, 5, True)),
    "gpt2": (lambda: text_feeds(3, 11, False), lambda: text_feeds(1, 5, False)),
    # the dynamo exporter fixes the sequence length of a recurrent model at export (8)
    "rnn": (lambda: sequence_feeds(3, 8), lambda: sequence_feeds(1, 8)),
}
EXPORTERS = ("torchscript", "dynamo")
FILES = [f"{fam}_{exp}" for fam in FAMILIES for exp in EXPORTERS]


@functools.cache
def loaded(name: str) -> onnx2jax.Model:
    return onnx2jax.load(os.path.join(MODELS, f"{name}.onnx"))


@functools.cache
def session(name: str):
    return ort.InferenceSession(
        os.path.join(MODELS, f"{name}.onnx"), providers=["CPUExecutionProvider"]
    )


def assert_matches_ort(name: str, feeds: dict[str, np.ndarray], outputs, what: str) -> None:
    sess = session(name)
    expected = sess.run(None, feeds)
    names = [o.name for o in sess.get_outputs()]
    assert len(outputs) == len(expected), (
        f"{name}: {len(outputs)} outputs, expected {len(expected)}"
    )
    for out_name, exp, got in zip(names, expected, outputs, strict=True):
        got = np.asarray(got)
        where = f"{name} ({what}) output {out_name!r}"
        assert got.shape == exp.shape, f"{where}: shape {got.shape} != {exp.shape}"
        assert got.dtype == exp.dtype, f"{where}: dtype {got.dtype} != {exp.dtype}"
        np.testing.assert_allclose(got, exp, rtol=RTOL, atol=ATOL, err_msg=where)


@pytest.mark.parametrize("name", FILES)
def test_file_is_small_and_self_contained(name):
    path = os.path.join(MODELS, f"{name}.onnx")
    assert os.path.isfile(path), f"{path} is missing: run tests/models/make_models.py"
    assert os.path.getsize(path) < 2 * 1024 * 1024
    extra = [f for f in os.listdir(MODELS) if f.startswith(f"{name}.onnx") and f != f"{name}.onnx"]
    assert not extra, f"external data files {extra}: the models must be single files"


@pytest.mark.parametrize("case", [0, 1], ids=["main", "small"])
@pytest.mark.parametrize("name", FILES)
def test_jitted_matches_onnxruntime(name, case):
    feeds = FAMILIES[name.split("_")[0]][case]()
    model = loaded(name)
    assert model.input_names == list(feeds), f"{name}: inputs {model.input_names}"
    assert_matches_ort(name, feeds, model(**feeds), "model(...)")


@pytest.mark.parametrize("name", FILES)
def test_apply_under_jit_matches(name):
    feeds = FAMILIES[name.split("_")[0]][0]()
    model = loaded(name)
    applied = jax.jit(model.apply)(model.params, **feeds)
    assert_matches_ort(name, feeds, applied, "jax.jit(model.apply)")
    # The two paths trace the same graph: they should agree far more tightly than with ORT.
    for got, ref in zip(applied, model(**feeds), strict=True):
        np.testing.assert_allclose(
            np.asarray(got),
            np.asarray(ref),
            rtol=1e-5,
            atol=1e-6,
            err_msg=f"{name}: jax.jit(model.apply) differs from model(...)",
        )


def test_example_tiny_cnn():
    """The README quick-start model loads and matches onnxruntime at a batch it was not exported with."""
    path = os.path.join(os.path.dirname(MODELS), os.pardir, "examples", "tiny_cnn.onnx")
    images = np.random.default_rng(0).standard_normal((4, 3, 32, 32), dtype=np.float32)
    (expected,) = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(
        None, {"image": images}
    )
    model = onnx2jax.load(path)
    (got,) = model(images)
    np.testing.assert_allclose(np.asarray(got), expected, rtol=RTOL, atol=ATOL)
    (applied,) = jax.jit(model.apply)(model.params, image=images)
    np.testing.assert_allclose(np.asarray(applied), expected, rtol=RTOL, atol=ATOL)
