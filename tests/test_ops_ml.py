"""ai.onnx.ml ops (ops/ml.py) against onnxruntime and onnx's reference."""

import numpy as np
import onnx
import onnx.helper as oh
import pytest
from onnx.reference import ReferenceEvaluator
from op_check import node_model

import onnx2jax

rng = np.random.default_rng(0)
ML = "ai.onnx.ml"


def check_ml(
    op,
    inputs,
    attrs,
    *,
    ml_opset=1,
    reference="onnxruntime",
    constants=(),
    out_type=None,
    rtol=1e-5,
    atol=1e-6,
):
    """One ai.onnx.ml node (at ``ml_opset``) through onnx2jax, jitted and eager, vs a reference."""
    model = node_model(op, inputs, attrs, domain=ML, opset=17, constants=constants)
    del model.opset_import[:]
    model.opset_import.extend([oh.make_opsetid("", 17), oh.make_opsetid(ML, ml_opset)])
    if out_type is not None:  # string outputs must be declared (such graphs run eagerly)
        model.graph.output[0].CopyFrom(oh.make_tensor_value_info("out0", out_type, None))
    feeds = {n: v for n, v in inputs.items() if n not in constants}
    if reference == "onnx":
        expected = ReferenceEvaluator(model).run(None, feeds)[0]
    else:
        import onnxruntime as ort

        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        expected = sess.run(None, feeds)[0]
    m = onnx2jax.load(model, x64=True)
    results = [np.asarray(m(**feeds)[0]), np.asarray(m.apply(m.params, **feeds)[0])]
    expected = np.asarray(expected)
    for got in results:
        assert got.shape == expected.shape, (got.shape, expected.shape)
        if expected.dtype.kind in "OSU":
            assert got.dtype == object
            np.testing.assert_array_equal(got, expected)
        else:
            assert got.dtype == expected.dtype, (got.dtype, expected.dtype)
            np.testing.assert_allclose(got, expected, rtol=rtol, atol=atol)
    return results[0]


def test_binarizer():
    x = rng.standard_normal((3, 4)).astype(np.float32)
    # onnxruntime has no Binarizer kernel
    check_ml("Binarizer", {"x": x}, {"threshold": 0.3}, reference="onnx")
    check_ml("Binarizer", {"x": x.astype(np.float64)}, {}, reference="onnx")


@pytest.mark.parametrize("shape", [(5,), (3, 5), (2, 3, 5)])
@pytest.mark.parametrize("idx_shape", [(2,), (1, 3)])
def test_array_feature_extractor(shape, idx_shape):
    x = rng.standard_normal(shape).astype(np.float32)
    idx = rng.integers(0, 5, idx_shape).astype(np.int64)
    check_ml("ArrayFeatureExtractor", {"x": x, "i": idx}, {})
    check_ml("ArrayFeatureExtractor", {"x": x.astype(np.int64), "i": idx}, {}, constants=["i"])


# -- LabelEncoder ----------------------------------------------------------------------------


def test_label_encoder_numeric_traced():
    x = np.array([[1, 5, 7], [3, 3, 10]], np.int64)
    attrs = {"keys_int64s": [3, 1, 7], "values_int64s": [30, 10, 70], "default_int64": 99}
    check_ml("LabelEncoder", {"x": x}, attrs, ml_opset=2)
    # a repeated key: the last one wins (opset 4's rule; onnxruntime keeps the first)
    attrs = {"keys_int64s": [3, 1, 7, 3], "values_int64s": [30, 10, 70, 31], "default_int64": 99}
    check_ml("LabelEncoder", {"x": x}, attrs, ml_opset=4, reference="onnx")
    xf = np.array([0.5, np.nan, 2.0, -1.0], np.float32)
    attrs = {"keys_floats": [2.0, 0.5], "values_floats": [20.0, 5.0]}
    check_ml("LabelEncoder", {"x": xf}, attrs, ml_opset=2)
    check_ml(
        "LabelEncoder", {"x": xf}, {"keys_floats": [2.0, 0.5], "values_int64s": [1, 2]}, ml_opset=2
    )


def test_label_encoder_nan_key_matches_nan():
    # the spec's rule (opset 4); onnxruntime and onnx's reference both miss it
    attrs = {"keys_floats": [2.0, float("nan")], "values_int64s": [20, 7]}
    xf = np.array([np.nan, 2.0, 1.0], np.float32)
    model = node_model("LabelEncoder", {"x": xf}, attrs, domain=ML)
    model.opset_import[1].version = 4
    m = onnx2jax.load(model, x64=True)
    np.testing.assert_array_equal(np.asarray(m(xf)[0]), [7, 20, -1])


def test_label_encoder_strings():
    x = np.array(["a", "b", "zz", "c"], dtype=object)
    check_ml(
        "LabelEncoder",
        {"x": x},
        {"keys_strings": ["a", "b", "c"], "values_int64s": [0, 1, 2], "default_int64": 42},
        ml_opset=2,
    )
    check_ml(
        "LabelEncoder",
        {"x": x},
        {"keys_strings": ["a", "c"], "values_strings": ["A", "C"]},
        ml_opset=2,
        out_type=onnx.TensorProto.STRING,
    )
    check_ml(
        "LabelEncoder",
        {"x": np.array([1, 4, 2], np.int64)},
        {"keys_int64s": [1, 2], "values_strings": ["one", "two"], "default_string": "?"},
        ml_opset=2,
        out_type=onnx.TensorProto.STRING,
    )


def test_label_encoder_tensor_attributes():
    keys = onnx.numpy_helper.from_array(np.array([1.5, 2.5], np.float32), "k")
    values = onnx.numpy_helper.from_array(np.array([10, 20], np.int32), "v")
    default = onnx.numpy_helper.from_array(np.array([-5], np.int32), "d")
    x = np.array([2.5, 0.0, 1.5], np.float32)
    check_ml(
        "LabelEncoder",
        {"x": x},
        {"keys_tensor": keys, "values_tensor": values, "default_tensor": default},
        ml_opset=4,
        reference="onnx",
    )  # onnxruntime has no opset-4 LabelEncoder


def test_label_encoder_opset1_classes():
    x = np.array(["b", "q", "a"], dtype=object)
    check_ml("LabelEncoder", {"x": x}, {"classes_strings": ["a", "b"], "default_int64": -3})
    check_ml(
        "LabelEncoder",
        {"x": np.array([1, 0, 5], np.int64)},
        {"classes_strings": ["a", "b"], "default_string": "none"},
        out_type=onnx.TensorProto.STRING,
    )


# -- TreeEnsemble ----------------------------------------------------------------------------


def random_ensemble(n_trees, n_features, n_targets, max_depth, member=False):
    """Random trees in TreeEnsemble's encoding (interior nodes and leaves numbered apart)."""
    nodes = {k: [] for k in ("modes", "feats", "splits", "tid", "fid", "tleaf", "fleaf", "miss")}
    leaves_w, leaves_t, roots, sets = [], [], [], []

    def leaf():
        leaves_w.append(float(rng.normal()))
        leaves_t.append(int(rng.integers(0, n_targets)))
        return len(leaves_w) - 1

    def build(depth):
        i = len(nodes["modes"])
        mode = int(rng.integers(0, 7 if member else 6))
        for k in nodes:
            nodes[k].append(0)
        nodes["modes"][i] = mode
        nodes["feats"][i] = int(rng.integers(0, n_features))
        nodes["splits"][i] = float(np.round(rng.normal(), 1)) if mode != 6 else float("nan")
        nodes["miss"][i] = int(rng.integers(0, 2))
        if mode == 6:
            # small positive integers: onnxruntime keeps sets as bitsets of those, and onnx's
            # reference ends a set at a 0 member
            sets.extend([*rng.choice([1.0, 2.0, 3.0, 5.0], 2, replace=False), float("nan")])
        for side in ("t", "f"):
            if depth >= max_depth or rng.random() < 0.3:
                nodes[f"{side}id"][i], nodes[f"{side}leaf"][i] = leaf(), 1
            else:
                nodes[f"{side}id"][i], nodes[f"{side}leaf"][i] = build(depth + 1), 0
        return i

    for _ in range(n_trees):
        roots.append(build(1))
    attrs = {
        "nodes_modes": onnx.numpy_helper.from_array(np.array(nodes["modes"], np.uint8), "m"),
        "nodes_featureids": nodes["feats"],
        "nodes_truenodeids": nodes["tid"],
        "nodes_falsenodeids": nodes["fid"],
        "nodes_trueleafs": nodes["tleaf"],
        "nodes_falseleafs": nodes["fleaf"],
        "nodes_splits": onnx.numpy_helper.from_array(np.array(nodes["splits"], np.float32), "s"),
        "nodes_missing_value_tracks_true": nodes["miss"],
        "leaf_targetids": leaves_t,
        "leaf_weights": onnx.numpy_helper.from_array(np.array(leaves_w, np.float32), "w"),
        "tree_roots": roots,
        "n_targets": n_targets,
    }
    if member:
        attrs["membership_values"] = onnx.numpy_helper.from_array(np.array(sets, np.float32), "mv")
    return attrs


def features(n, f):
    x = np.round(rng.normal(size=(n, f)), 1).astype(np.float32)  # ties hit EQ/NEQ/LEQ splits
    x[rng.random((n, f)) < 0.3] = rng.choice([1.0, 2.0, 3.0, 5.0])  # set members
    x[rng.random((n, f)) < 0.1] = np.nan
    return x


@pytest.mark.parametrize("aggregate", [0, 1, 2, 3])
@pytest.mark.parametrize("member", [False, True])
def test_tree_ensemble(aggregate, member):
    attrs = random_ensemble(5, 4, 3, 4, member=member)
    attrs["aggregate_function"] = aggregate
    x = features(40, 4)
    check_ml("TreeEnsemble", {"x": x}, attrs, ml_opset=5, reference="onnxruntime")
    if aggregate < 2:  # onnx's reference leaves +-max for targets no leaf reaches
        check_ml("TreeEnsemble", {"x": x}, attrs, ml_opset=5, reference="onnx")


def _softmax_zero(y):
    e = np.where(y != 0, np.exp(y - np.max(np.where(y != 0, y, -np.inf), -1, keepdims=True)), 0)
    return e / e.sum(-1, keepdims=True)


POST = {
    1: lambda y: np.exp(y) / np.exp(y).sum(-1, keepdims=True),
    2: lambda y: 1 / (1 + np.exp(-y)),
    3: _softmax_zero,
    4: lambda y: np.sqrt(2) * __import__("scipy.special").special.erfinv(2 * y - 1),
}


@pytest.mark.parametrize("post", [1, 2, 3, 4])
def test_tree_ensemble_post_transform(post):
    # Checked against the spec's formulas on the raw scores: onnxruntime swaps SOFTMAX (1)
    # and LOGISTIC (2), and onnx's reference ignores post_transform.
    if post == 4:
        pytest.importorskip("scipy")
    attrs = random_ensemble(6, 3, 4, 3)
    x = features(30, 3)
    if post == 4:  # probit needs scores in (0, 1)
        w = rng.uniform(0.01, 0.15, len(attrs["leaf_targetids"])).astype(np.float32)
        attrs["leaf_weights"] = onnx.numpy_helper.from_array(w, "w")
    raw = check_ml("TreeEnsemble", {"x": x}, attrs, ml_opset=5)
    model = node_model("TreeEnsemble", {"x": x}, {**attrs, "post_transform": post}, domain=ML)
    model.opset_import[1].version = 5
    got = np.asarray(onnx2jax.load(model)(x)[0])
    with np.errstate(all="ignore"):
        want = POST[post](raw.astype(np.float64))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_tree_ensemble_single_leaf_tree_and_double():
    attrs = random_ensemble(2, 2, 2, 2)
    # a third tree that is only a leaf: one node whose branches name the same leaf
    n = len(attrs["nodes_featureids"])
    attrs["leaf_targetids"] = [*attrs["leaf_targetids"], 1]
    w = onnx.numpy_helper.to_array(attrs["leaf_weights"]).tolist() + [2.5]
    attrs["leaf_weights"] = onnx.numpy_helper.from_array(np.array(w, np.float64), "w")
    leaf = len(w) - 1
    modes = onnx.numpy_helper.to_array(attrs["nodes_modes"]).tolist() + [0]
    attrs["nodes_modes"] = onnx.numpy_helper.from_array(np.array(modes, np.uint8), "m")
    splits = onnx.numpy_helper.to_array(attrs["nodes_splits"]).tolist() + [0.0]
    attrs["nodes_splits"] = onnx.numpy_helper.from_array(np.array(splits, np.float64), "s")
    for k, v in (
        ("nodes_featureids", 0),
        ("nodes_truenodeids", leaf),
        ("nodes_falsenodeids", leaf),
        ("nodes_trueleafs", 1),
        ("nodes_falseleafs", 1),
        ("nodes_missing_value_tracks_true", 0),
    ):
        attrs[k] = [*attrs[k], v]
    attrs["tree_roots"] = [*attrs["tree_roots"], n]
    x = features(10, 2).astype(np.float64)
    # onnx's reference reads a leaf-only tree's weight at the node's index, not the leaf's
    check_ml("TreeEnsemble", {"x": x}, attrs, ml_opset=5, reference="onnxruntime")
