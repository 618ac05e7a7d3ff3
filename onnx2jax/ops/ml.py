"""ai.onnx.ml ops: Binarizer, ArrayFeatureExtractor, LabelEncoder and TreeEnsemble."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .._errors import StaticValueError
from .._registry import register
from ._common import xp

ML = "ai.onnx.ml"


@register("Binarizer", domain=ML)
def binarizer(x, *, threshold=0.0):
    """https://onnx.ai/onnx/operators/onnx_aionnxml_Binarizer.html: 1 where x > threshold."""
    return (x > threshold).astype(x.dtype)


@register("ArrayFeatureExtractor", domain=ML)
def array_feature_extractor(x, indices):
    """https://onnx.ai/onnx/operators/onnx_aionnxml_ArrayFeatureExtractor.html

    Gathers the flattened ``indices`` on the last axis; a 1-D input gives a [1, k] result
    (as onnxruntime and onnx's reference do).
    """
    m = xp(x, indices)
    idx = indices.reshape(-1)
    out = m.take(x, idx, axis=-1) if m is np else jnp.take(x, idx, axis=-1, mode="fill")
    return out.reshape(1, -1) if x.ndim == 1 else out


# -- LabelEncoder ----------------------------------------------------------------------------


def _as_str(v) -> str:
    return v.decode("utf-8") if isinstance(v, bytes) else str(v)


def _first(*candidates):
    for c in candidates:
        if c is not None and len(c):
            return c
    return None


def _encode(x, keys, values, default, out_dtype):
    """Map each element of x through keys -> values (the last of repeated keys wins)."""
    keys, values = list(keys), list(values)
    if len(keys) != len(values):
        raise ValueError(f"{len(keys)} keys but {len(values)} values")
    if np.dtype(x.dtype).kind in "OSU" or out_dtype.kind == "O":
        if not isinstance(x, np.ndarray):
            raise StaticValueError(
                "LabelEncoder with string keys or values runs in Python, so its input must "
                "be known at trace time (a graph input or a constant, not computed on device)"
            )
        table = {}
        for k, v in zip(keys, values, strict=True):
            k = _as_str(k) if isinstance(k, (str, bytes)) else k
            table[("nan",) if isinstance(k, float) and np.isnan(k) else k] = v
        flat = []
        for e in x.reshape(-1).tolist():
            e = _as_str(e) if isinstance(e, (str, bytes)) else e
            flat.append(table.get(("nan",) if isinstance(e, float) and np.isnan(e) else e, default))
        return np.array(flat, dtype=out_dtype).reshape(x.shape)
    # Numbers: a sorted lookup table, traced. NaN keys match NaN inputs.
    kd = np.dtype(x.dtype)
    karr = np.asarray(keys).astype(kd)
    varr = np.asarray(values).astype(out_dtype)
    last = {}
    for i, k in enumerate(karr.tolist()):
        last[("nan",) if isinstance(k, float) and np.isnan(k) else k] = i
    nan_value = last.pop(("nan",), None)
    order = sorted(last.items())
    m = xp(x)
    if order:
        sk = np.array([k for k, _ in order], dtype=kd)
        sv = np.array([varr[i] for _, i in order], dtype=out_dtype)
        pos = m.clip(m.searchsorted(sk, x), 0, len(sk) - 1)
        found = sk[pos] == x if m is np else jnp.asarray(sk)[pos] == x
        out = m.where(
            found, sv[pos] if m is np else jnp.asarray(sv)[pos], np.asarray(default, out_dtype)
        )
    else:
        out = m.full(x.shape, np.asarray(default, out_dtype))
    if nan_value is not None:
        out = m.where(m.isnan(x), varr[nan_value], out)
    return out.astype(out_dtype)


@register("LabelEncoder", domain=ML)
def label_encoder(
    x,
    *,
    classes_strings=None,
    default_float=-0.0,
    default_int64=-1,
    default_string="_Unused",
    default_tensor=None,
    keys_floats=None,
    keys_int64s=None,
    keys_strings=None,
    keys_tensor=None,
    values_floats=None,
    values_int64s=None,
    values_strings=None,
    values_tensor=None,
):
    """https://onnx.ai/onnx/operators/onnx_aionnxml_LabelEncoder.html (opsets 1, 2 and 4).

    Numeric maps run traced (sorted keys + searchsorted); maps with strings on either side
    run in Python on static values.
    """
    if classes_strings is not None:
        # Opset 1: strings -> their index, or indices -> strings.
        classes = [_as_str(c) for c in classes_strings]
        if np.dtype(x.dtype).kind in "OSU":
            return _encode(x, classes, range(len(classes)), default_int64, np.dtype(np.int64))
        return _encode(x, range(len(classes)), classes, default_string, np.dtype(object))
    keys = _first(keys_tensor, keys_floats, keys_int64s, keys_strings)
    values = _first(values_tensor, values_floats, values_int64s, values_strings)
    if keys is None or values is None:
        raise ValueError("LabelEncoder needs one keys_* and one values_* attribute")
    if values_tensor is not None:
        vt = np.asarray(values_tensor)
        out_dtype = np.dtype(object) if vt.dtype.kind in "OSU" else vt.dtype
        if default_tensor is not None:
            default = np.asarray(default_tensor).reshape(-1)[0]
        else:
            default = (
                "_Unused" if out_dtype.kind == "O" else (-1 if vt.dtype.kind in "iu" else -0.0)
            )
    elif values is values_floats:
        out_dtype, default = np.dtype(np.float32), default_float
    elif values is values_int64s:
        out_dtype, default = np.dtype(np.int64), default_int64
    else:
        out_dtype, default = np.dtype(object), default_string
    if out_dtype.kind == "O":
        default, values = _as_str(default), [_as_str(v) for v in values]
    return _encode(x, keys, values, default, out_dtype)


# -- TreeEnsemble ----------------------------------------------------------------------------

_LEQ, _LT, _GTE, _GT, _EQ, _NEQ, _MEMBER = range(7)


def _depth(roots, true_ids, false_ids, true_leaf, false_leaf) -> int:
    """The most interior nodes on any root-to-leaf path (the number of traversal steps)."""
    best = 0
    for root in roots:
        stack = [(root, 1)]
        while stack:
            node, d = stack.pop()
            best = max(best, d)
            if d > len(true_ids):
                raise ValueError("the tree has a cycle")
            for child, leaf in (
                (true_ids[node], true_leaf[node]),
                (false_ids[node], false_leaf[node]),
            ):
                if not leaf:
                    stack.append((child, d + 1))
    return best


def _post_transform(y, kind):
    if kind == 0:
        return y
    if kind == 1:
        return jax.nn.softmax(y, axis=-1)
    if kind == 2:
        return jax.nn.sigmoid(y)
    if kind == 3:
        # softmax over the non-zero scores; zeros stay zero (as onnxruntime)
        nz = y != 0
        mx = jnp.max(jnp.where(nz, y, -jnp.inf), axis=-1, keepdims=True)
        e = jnp.where(nz, jnp.exp(y - jnp.where(jnp.isfinite(mx), mx, 0)), 0)
        total = jnp.sum(e, axis=-1, keepdims=True)
        return jnp.where(total > 0, e / jnp.where(total > 0, total, 1), 0)
    if kind == 4:
        return jnp.sqrt(2.0) * jax.scipy.special.erfinv(2 * y - 1)
    raise ValueError(f"unknown post_transform {kind}")


@register("TreeEnsemble", since=5, domain=ML)
def tree_ensemble(
    x,
    *,
    aggregate_function=1,
    leaf_targetids,
    leaf_weights,
    membership_values=None,
    n_targets=None,
    nodes_falseleafs,
    nodes_falsenodeids,
    nodes_featureids,
    nodes_hitrates=None,
    nodes_missing_value_tracks_true=None,
    nodes_modes,
    nodes_splits,
    nodes_trueleafs,
    nodes_truenodeids,
    post_transform=0,
    tree_roots,
):
    """https://onnx.ai/onnx/operators/onnx_aionnxml_TreeEnsemble.html: [N, F] -> [N, n_targets].

    post_transform follows the spec's numbering (1 SOFTMAX, 2 LOGISTIC); onnxruntime 1.2x
    swaps those two.

    All trees are walked at once, one level per step, for as many steps as the deepest tree
    (decided at trace time); every step is a gather and a compare over [N, trees].
    """
    del nodes_hitrates
    modes = np.asarray(nodes_modes).astype(np.int64).reshape(-1)
    n_nodes = len(modes)
    feats = np.asarray(nodes_featureids, np.int64)
    t_ids, f_ids = np.asarray(nodes_truenodeids, np.int64), np.asarray(nodes_falsenodeids, np.int64)
    t_leaf = np.asarray(nodes_trueleafs, bool)
    f_leaf = np.asarray(nodes_falseleafs, bool)
    tracks = (
        np.zeros(n_nodes, bool)
        if nodes_missing_value_tracks_true is None
        else np.asarray(nodes_missing_value_tracks_true, bool)
    )
    roots = np.asarray(tree_roots, np.int64)
    x = jnp.asarray(x)
    dtype = x.dtype  # float64 computes as float32 with x64 off
    splits = np.asarray(nodes_splits).astype(dtype)
    # Set-membership nodes: their NaN-delimited member lists as rows of a NaN-padded matrix.
    members = np.full((n_nodes, 1), np.nan)
    if (modes == _MEMBER).any():
        if membership_values is None:
            raise ValueError("BRANCH_MEMBER nodes need membership_values")
        vals = np.asarray(membership_values, np.float64).reshape(-1)
        ends = np.flatnonzero(np.isnan(vals))
        sets, start = [], 0
        for end in ends:
            sets.append(vals[start:end])
            start = end + 1
        member_nodes = np.flatnonzero(modes == _MEMBER)
        if len(sets) < len(member_nodes):
            raise ValueError("membership_values has fewer sets than BRANCH_MEMBER nodes")
        width = max([len(s) for s in sets] + [1])
        members = np.full((n_nodes, width), np.nan)
        for node, s in zip(member_nodes, sets, strict=False):
            members[node, : len(s)] = s
    members = members.astype(dtype)
    # A one-entry tree whose branches both name the same leaf is that leaf.
    root_leaf = t_leaf[roots] & f_leaf[roots] & (t_ids[roots] == f_ids[roots])
    start_idx = np.where(root_leaf, t_ids[roots], roots)
    steps = _depth(
        [r for r, lf in zip(roots, root_leaf, strict=True) if not lf], t_ids, f_ids, t_leaf, f_leaf
    )

    n = x.shape[0]
    idx = jnp.broadcast_to(jnp.asarray(start_idx), (n, len(roots)))
    done = jnp.broadcast_to(jnp.asarray(root_leaf), (n, len(roots)))
    rows = jnp.arange(n)[:, None]
    for _ in range(steps):
        node = jnp.where(done, 0, idx)  # finished walks read node 0, then keep their leaf
        v = x[rows, jnp.asarray(feats)[node]]
        s = jnp.asarray(splits)[node]
        mode = jnp.asarray(modes)[node]
        member = jnp.any(v[..., None] == jnp.asarray(members)[node], axis=-1)
        cond = jnp.select(
            [mode == _LEQ, mode == _LT, mode == _GTE, mode == _GT, mode == _EQ, mode == _NEQ],
            [v <= s, v < s, v >= s, v > s, v == s, v != s],
            member,
        )
        cond = cond | (jnp.isnan(v) & jnp.asarray(tracks)[node])
        nxt = jnp.where(cond, jnp.asarray(t_ids)[node], jnp.asarray(f_ids)[node])
        leaf = jnp.where(cond, jnp.asarray(t_leaf)[node], jnp.asarray(f_leaf)[node])
        idx = jnp.where(done, idx, nxt)
        done = done | leaf
    weights = jnp.asarray(np.asarray(leaf_weights).astype(dtype))[idx]  # [N, trees]
    targets = jnp.asarray(np.asarray(leaf_targetids, np.int64))[idx]
    n_out = int(n_targets) if n_targets is not None else int(max(leaf_targetids)) + 1
    onehot = targets[..., None] == jnp.arange(n_out)  # [N, trees, targets]
    if aggregate_function in (0, 1):
        y = jnp.sum(jnp.where(onehot, weights[..., None], 0), axis=1)
        if aggregate_function == 0:
            y = y / len(roots)
    elif aggregate_function in (2, 3):
        big = jnp.finfo(dtype).max if aggregate_function == 2 else jnp.finfo(dtype).min
        pick = jnp.min if aggregate_function == 2 else jnp.max
        y = pick(jnp.where(onehot, weights[..., None], big), axis=1)
        # a target no leaf reached scores 0, as onnxruntime (onnx's reference leaves +-max)
        y = jnp.where(jnp.any(onehot, axis=1), y, 0)
    else:
        raise ValueError(f"unknown aggregate_function {aggregate_function}")
    return _post_transform(y, post_transform).astype(dtype)
