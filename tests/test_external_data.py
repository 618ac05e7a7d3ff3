"""External data is read relative to the model file; locations escaping its folder are refused."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from models_in_code import affine_relu, reference

import onnx2jax
from onnx2jax import ExternalDataError

X = np.random.default_rng(3).standard_normal((2, 4)).astype(np.float32)


def _save_external(tmp_path, location="weights.bin"):
    proto = affine_relu()
    path = tmp_path / "model.onnx"
    onnx.save_model(
        proto,
        path,
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=location,
        size_threshold=0,
    )
    return proto, path


def _set_location(path, location):
    proto = onnx.load(path, load_external_data=False)
    for t in proto.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = location
    onnx.save_model(proto, path)


def test_external_data_loads(tmp_path):
    _, path = _save_external(tmp_path)
    m = onnx2jax.load(path)
    np.testing.assert_allclose(
        np.asarray(m(X)[0]), reference(affine_relu(), x=X)[0], rtol=1e-6, atol=1e-6
    )


def test_file_object_with_name_finds_external_data(tmp_path):
    _, path = _save_external(tmp_path)
    with open(path, "rb") as f:
        m = onnx2jax.load(f)
    np.testing.assert_allclose(
        np.asarray(m(X)[0]), reference(affine_relu(), x=X)[0], rtol=1e-6, atol=1e-6
    )


def test_bytes_with_external_data_need_base_dir(tmp_path):
    _, path = _save_external(tmp_path)
    with pytest.raises(ExternalDataError, match="not loaded from a file path"):
        onnx2jax.load(path.read_bytes())
    onnx2jax.load(path.read_bytes(), base_dir=str(tmp_path))


def test_missing_external_file(tmp_path):
    _, path = _save_external(tmp_path)
    os.remove(tmp_path / "weights.bin")
    with pytest.raises(ExternalDataError, match="does not exist"):
        onnx2jax.load(path)


@pytest.mark.parametrize("location", ["../weights.bin", "sub/../../weights.bin", "/etc/passwd"])
def test_escaping_locations_refused(tmp_path, location):
    _, path = _save_external(tmp_path)
    _set_location(path, location)
    with pytest.raises(ExternalDataError, match="unsafe"):
        onnx2jax.load(path)


def test_symlink_out_of_folder_refused(tmp_path):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    _, path = _save_external(model_dir)
    outside = tmp_path / "outside.bin"
    os.replace(model_dir / "weights.bin", outside)
    os.symlink(outside, model_dir / "weights.bin")
    with pytest.raises(ExternalDataError, match="outside the model's folder"):
        onnx2jax.load(path)


def test_short_external_file(tmp_path):
    _, path = _save_external(tmp_path)
    with open(tmp_path / "weights.bin", "r+b") as f:
        f.truncate(8)
    with pytest.raises(ExternalDataError, match="short"):
        onnx2jax.load(path)
