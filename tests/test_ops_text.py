"""Text ops (ops/text.py) against onnx's reference and onnxruntime."""

import numpy as np
import onnx
import onnx.helper as oh
import pytest
from onnx.reference import ReferenceEvaluator
from op_check import check_node, node_model

import onnx2jax

rng = np.random.default_rng(0)
STRING, INT64 = onnx.TensorProto.STRING, onnx.TensorProto.INT64


def check_text(
    op, inputs, attrs=None, out_types=(STRING,), *, opset, reference="onnx", constants=()
):
    """check_node for graphs with string outputs, which must be declared as such (they run
    eagerly); compares exactly with onnx's reference or onnxruntime."""
    model = node_model(
        op, inputs, attrs, n_outputs=len(out_types), opset=opset, constants=constants
    )
    for out, t in zip(model.graph.output, out_types, strict=True):
        out.CopyFrom(oh.make_tensor_value_info(out.name, t, None))
    feeds = {n: v for n, v in inputs.items() if v is not None and n not in constants}
    if reference == "onnx":
        expected = ReferenceEvaluator(model).run(None, feeds)
    else:
        import onnxruntime as ort

        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        expected = sess.run(None, feeds)
    m = onnx2jax.load(model, x64=True)
    for got in (m(**feeds), m.apply(m.params, **feeds)):
        for g, e in zip(got, expected, strict=True):
            g, e = np.asarray(g), np.asarray(e)
            assert g.shape == e.shape, (g.shape, e.shape)
            if e.dtype.kind in "OSU":  # the reference returns a 0-d result as numpy str
                assert g.dtype == object, g.dtype
            else:
                assert g.dtype == e.dtype, (g.dtype, e.dtype)
            np.testing.assert_array_equal(g, e)
    return [np.asarray(g) for g in got]


def s(*words):
    return np.array(words, dtype=object)


# -- StringNormalizer ------------------------------------------------------------------------


@pytest.mark.parametrize("action", ["NONE", "LOWER", "UPPER"])
@pytest.mark.parametrize("case_sensitive", [0, 1])
@pytest.mark.parametrize("two_d", [False, True])
def test_string_normalizer(action, case_sensitive, two_d):
    # ASCII only: onnxruntime maps case through the C locale here (Unicode is tested below)
    x = s("Monday", "tuesday", "MONDAY", "wednesday", "monday", "MiXed")
    if two_d:
        x = x.reshape(1, -1)
    attrs = {
        "case_change_action": action,
        "is_case_sensitive": case_sensitive,
        "stopwords": ["monday", "Wednesday"],
        "locale": "C",
    }
    check_text("StringNormalizer", {"x": x}, attrs, opset=10, reference="onnxruntime")


@pytest.mark.parametrize("two_d", [False, True])
def test_string_normalizer_all_dropped(two_d):
    x = s("a", "A")
    x = x.reshape(1, -1) if two_d else x
    out = check_text(
        "StringNormalizer",
        {"x": x},
        {"stopwords": ["a"], "locale": "C"},
        opset=10,
        reference="onnxruntime",
    )[0]
    assert out.shape == ((1, 1) if two_d else (1,)) and out.reshape(-1)[0] == ""


def test_string_normalizer_unicode_case():
    model = node_model(
        "StringNormalizer",
        {"x": s("Ünïcode", "STRASSE")},
        {"case_change_action": "LOWER"},
        opset=10,
    )
    model.graph.output[0].CopyFrom(oh.make_tensor_value_info("out0", STRING, None))
    out = onnx2jax.load(model)(s("Ünïcode", "STRASSE"))[0]
    np.testing.assert_array_equal(out, s("ünïcode", "strasse"))


# -- StringConcat / StringSplit / RegexFullMatch --------------------------------------------


def test_string_concat():
    check_text("StringConcat", {"x": s("a", "bc", ""), "y": s("1", "", "zz")}, opset=20)
    check_text("StringConcat", {"x": s("a", "bc", "").reshape(3, 1), "y": s("-", "+")}, opset=20)
    check_text("StringConcat", {"x": np.array("ü", object), "y": np.array("ß", object)}, opset=20)


@pytest.mark.parametrize(
    "attrs",
    [
        {},
        {"delimiter": ""},
        {"delimiter": "-"},
        {"delimiter": "--"},
        {"maxsplit": 1},
        {"delimiter": "-", "maxsplit": 2},
    ],
)
def test_string_split(attrs):
    x = s("a-b-c", "  lead and  trail ", "", "--x--", "one").reshape(5, 1)
    check_text("StringSplit", {"x": x}, attrs, (STRING, INT64), opset=20)
    check_text("StringSplit", {"x": x}, attrs, (STRING, INT64), opset=20, constants=["x"])


def test_string_split_empty_input():
    out = check_text("StringSplit", {"x": np.empty((0,), object)}, None, (STRING, INT64), opset=20)
    assert out[0].shape == (0, 0) and out[1].shape == (0,)


def test_regex_full_match():
    x = s("www.google.com", "www.facebook.com", "google.com", "www.x.org").reshape(2, 2)
    check_node("RegexFullMatch", {"x": x}, {"pattern": r"www\.[\w.-]+\.\bcom\b"}, opset=20)
    check_node(
        "RegexFullMatch",
        {"x": s("a@gmail.com", "b@x.com")},
        {"pattern": r"(\W|^)[\w.\-]{0,25}@(yahoo|gmail)\.com(\W|$)"},
        opset=20,
    )


# -- TfIdfVectorizer -------------------------------------------------------------------------

POOL = {
    "ngram_counts": [0, 4, 10],
    "ngram_indexes": [0, 1, 2, 3, 4, 5, 6, 7, 8],
    "pool_int64s": [2, 3, 5, 4, 5, 6, 7, 8, 6, 7, 2, 3, 5, 4, 5, 6],
}  # 4 uni, 3 bi, 2 tri


@pytest.mark.parametrize("mode", ["TF", "IDF", "TFIDF"])
@pytest.mark.parametrize("grams", [(1, 1), (1, 2), (2, 3), (1, 3)])
@pytest.mark.parametrize("skip", [0, 2])
@pytest.mark.parametrize("weighted", [False, True])
def test_tfidf_int(mode, grams, skip, weighted):
    x = rng.integers(2, 9, (3, 12)).astype(np.int64)
    attrs = {
        **POOL,
        "mode": mode,
        "min_gram_length": grams[0],
        "max_gram_length": grams[1],
        "max_skip_count": skip,
    }
    if weighted:
        attrs["weights"] = rng.uniform(0.5, 2, 9).astype(np.float32).tolist()
    check_node("TfIdfVectorizer", {"x": x}, attrs, opset=9, reference="onnxruntime")
    check_node(
        "TfIdfVectorizer", {"x": x[0].astype(np.int32)}, attrs, opset=9, reference="onnxruntime"
    )
    check_node(
        "TfIdfVectorizer", {"x": x}, attrs, opset=9, constants=["x"], reference="onnxruntime"
    )


def test_tfidf_strings_and_shared_columns():
    attrs = {
        "ngram_counts": [0, 3],
        "ngram_indexes": [0, 1, 1, 2, 0],
        "pool_strings": ["a", "b", "c", "a", "b", "b", "c"],
        "mode": "TF",
        "min_gram_length": 1,
        "max_gram_length": 2,
        "max_skip_count": 1,
    }
    x = s("a", "b", "c", "a", "x", "b", "c", "b").reshape(2, 4)
    check_node("TfIdfVectorizer", {"x": x}, attrs, opset=9, reference="onnxruntime")
    check_node("TfIdfVectorizer", {"x": x.reshape(-1)}, attrs, opset=9)
