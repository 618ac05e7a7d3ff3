"""Text ops: StringNormalizer, StringConcat, StringSplit, RegexFullMatch and TfIdfVectorizer.

String tensors never enter XLA: graph inputs holding strings are specialised on their value,
so these ops always see numpy object arrays and run in Python at trace time. TfIdfVectorizer
on integer tokens is ordinary traced JAX.
"""

from __future__ import annotations

import re

import numpy as np

from .._registry import register
from ._common import xp


def _text(v) -> str:
    return v.decode("utf-8") if isinstance(v, bytes) else str(v)


def _strings(x) -> np.ndarray:
    """A string tensor as a numpy object array of ``str`` (bytes decoded as UTF-8)."""
    x = np.asarray(x)
    if x.dtype.kind not in "OSU":
        raise TypeError(f"expected a string tensor, got {x.dtype}")
    out = np.empty(x.shape, object)
    out.reshape(-1)[:] = [_text(v) for v in x.reshape(-1)]
    return out


@register("StringNormalizer", since=10)
def string_normalizer(
    x, *, case_change_action="NONE", is_case_sensitive=0, locale=None, stopwords=None
):
    """https://onnx.ai/onnx/operators/onnx__StringNormalizer.html

    Drops elements equal to a stop word (compared lower-cased unless is_case_sensitive), then
    changes case. ``locale`` is not applied: case mapping is Python's Unicode one.
    """
    x = _strings(x)
    if x.ndim not in (1, 2) or (x.ndim == 2 and x.shape[0] != 1):
        raise ValueError(f"input must have shape [C] or [1, C], got {list(x.shape)}")
    words = list(x.reshape(-1))
    if stopwords:
        if is_case_sensitive:
            stops = set(stopwords)
            words = [w for w in words if w not in stops]
        else:
            stops = {s.lower() for s in stopwords}
            words = [w for w in words if w.lower() not in stops]
    if case_change_action == "LOWER":
        words = [w.lower() for w in words]
    elif case_change_action == "UPPER":
        words = [w.upper() for w in words]
    elif case_change_action != "NONE":
        raise ValueError(
            f"case_change_action must be LOWER, UPPER or NONE, got {case_change_action!r}"
        )
    words = words or [""]  # everything dropped: one empty string, as the spec says
    out = np.array(words, dtype=object)
    return out.reshape(1, -1) if x.ndim == 2 else out


@register("StringConcat", since=20)
def string_concat(x, y):
    """https://onnx.ai/onnx/operators/onnx__StringConcat.html (broadcasting)."""
    out = np.frompyfunc(lambda a, b: a + b, 2, 1)(_strings(x), _strings(y))
    return np.asarray(out, dtype=object)  # a 0-d result comes back as a bare str


@register("StringSplit", since=20)
def string_split(x, *, delimiter=None, maxsplit=None):
    """https://onnx.ai/onnx/operators/onnx__StringSplit.html -> (substrings, counts).

    Without a delimiter (or an empty one) runs of whitespace split and edges are trimmed, as
    Python's ``str.split()``; rows are padded with "" to the longest split.
    """
    x = _strings(x)
    sep = delimiter or None
    limit = -1 if maxsplit is None else int(maxsplit)
    parts = [s.split(sep, limit) for s in x.reshape(-1)]
    counts = np.array([len(p) for p in parts], np.int64).reshape(x.shape)
    width = max((len(p) for p in parts), default=0)
    y = np.full((len(parts), width), "", dtype=object)
    for i, p in enumerate(parts):
        y[i, : len(p)] = p
    return y.reshape(*x.shape, width), counts


@register("RegexFullMatch", since=20)
def regex_full_match(x, *, pattern=None):
    """https://onnx.ai/onnx/operators/onnx__RegexFullMatch.html

    The spec names RE2 syntax; Python's ``re`` accepts it for the common subset (as onnx's
    reference does), not RE2's linear-time guarantee.
    """
    if pattern is None:
        raise ValueError("RegexFullMatch needs a pattern")
    regex = re.compile(pattern)
    x = _strings(x)
    out = np.array([regex.fullmatch(s) is not None for s in x.reshape(-1)], np.bool_)
    return out.reshape(x.shape)


# -- TfIdfVectorizer -------------------------------------------------------------------------


def _pool_ngrams(pool, ngram_counts, ngram_indexes, min_n, max_n):
    """{n: (grams [P, n], output columns [P])} for the pooled n-grams with min_n <= n <= max_n.

    ngram_counts[i] is where the (i + 1)-grams start in the pool; n-grams are numbered in pool
    order across all sizes, and ngram_indexes maps that number to an output column.
    """
    out, gram_id = {}, 0
    starts = list(ngram_counts) + [len(pool)]
    for i in range(len(ngram_counts)):
        n = i + 1
        items = pool[starts[i] : starts[i + 1]]
        count = len(items) // n
        if min_n <= n <= max_n and count:
            grams = np.asarray(items[: count * n]).reshape(count, n)
            out[n] = (grams, np.asarray(ngram_indexes[gram_id : gram_id + count], np.int64))
        gram_id += count
    return out


@register("TfIdfVectorizer", since=9)
def tfidf_vectorizer(
    x,
    *,
    max_gram_length,
    max_skip_count,
    min_gram_length,
    mode,
    ngram_counts,
    ngram_indexes,
    pool_int64s=None,
    pool_strings=None,
    weights=None,
):
    """https://onnx.ai/onnx/operators/onnx__TfIdfVectorizer.html

    Counts every pooled n-gram in each row of [C] or [N, C] tokens, with items up to
    max_skip_count apart (unigrams counted once), then weighs by mode (TF, IDF, TFIDF).
    Matching compares all windows with all pooled n-grams at once: O(C * pool) per row.
    """
    strings = pool_strings is not None
    pool = [_text(s) for s in pool_strings] if strings else list(pool_int64s or [])
    if strings:
        x = _strings(x)
    m = np if strings else xp(x)
    rows = x.reshape(1, -1) if x.ndim <= 1 else x
    n_rows, c = rows.shape
    size = max(ngram_indexes) + 1
    freq = m.zeros((n_rows, size), np.float32)
    grams = _pool_ngrams(
        pool, ngram_counts, ngram_indexes, max(min_gram_length, 1), max_gram_length
    )
    for n, (pool_n, cols) in grams.items():
        total = None
        # Unigrams do not depend on the skip: count them once.
        for skip in range(max_skip_count + 1 if n > 1 else 1):
            step = skip + 1
            width = c - (n - 1) * step
            if width <= 0:
                continue
            idx = np.arange(width)[:, None] + np.arange(n)[None, :] * step  # [W, n]
            windows = rows[:, idx]  # [rows, W, n]
            if not strings:
                pool_n = pool_n.astype(np.int64)
            hits = m.all(windows[:, :, None, :] == pool_n[None, None, :, :], axis=-1)
            counts = m.sum(hits, axis=1).astype(np.float32)  # [rows, P]
            total = counts if total is None else total + counts
        if total is not None:
            if m is np:
                np.add.at(freq, (slice(None), cols), total)
            else:
                freq = freq.at[:, cols].add(total)
    w = None if not weights else np.asarray(weights, np.float32)
    if mode == "TF":
        out = freq
    elif mode == "IDF":
        present = (freq > 0).astype(np.float32)
        out = present * w if w is not None else present
    elif mode == "TFIDF":
        out = freq * w if w is not None else freq
    else:
        raise ValueError(f"mode must be TF, IDF or TFIDF, got {mode!r}")
    return out.reshape(size) if x.ndim <= 1 else out
