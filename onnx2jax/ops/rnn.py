"""Recurrent ops: RNN, GRU and LSTM, each ``jax.lax.scan`` over time (one per direction, or one)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from .._kernels import matmul as kernels
from .._registry import register

# Activation functions of the recurrent ops: name -> (function, takes alpha, takes beta,
# default alpha, default beta). Defaults are those of the ONNX operators of the same name, as
# the spec asks. Alphas and betas are consumed in order, only by the functions that take one
# (onnxruntime does the same), across both directions of a bidirectional op.
_ACTS: dict[str, tuple[Callable, bool, bool, float, float]] = {
    "relu": (lambda x, a, b: jnp.maximum(x, 0), False, False, 0.0, 0.0),
    "tanh": (lambda x, a, b: jnp.tanh(x), False, False, 0.0, 0.0),
    "sigmoid": (lambda x, a, b: jax.nn.sigmoid(x), False, False, 0.0, 0.0),
    "affine": (lambda x, a, b: x * a + b, True, True, 1.0, 0.0),
    "leakyrelu": (lambda x, a, b: jnp.where(x >= 0, x, x * a), True, False, 0.01, 0.0),
    "thresholdedrelu": (lambda x, a, b: jnp.where(x >= a, x, 0), True, False, 1.0, 0.0),
    "scaledtanh": (lambda x, a, b: a * jnp.tanh(b * x), True, True, 1.0, 1.0),
    "hardsigmoid": (lambda x, a, b: jnp.clip(x * a + b, 0, 1), True, True, 0.2, 0.5),
    "elu": (lambda x, a, b: jnp.where(x >= 0, x, a * jnp.expm1(x)), True, False, 1.0, 0.0),
    "softsign": (lambda x, a, b: x / (1 + jnp.abs(x)), False, False, 0.0, 0.0),
    "softplus": (lambda x, a, b: jax.nn.softplus(x), False, False, 0.0, 0.0),
}

Act = tuple[str, float, float]  # (lower-case name, alpha, beta): hashable, so comparable


def _activations(
    names: Sequence[str] | None,
    alphas: Sequence[float] | None,
    betas: Sequence[float] | None,
    defaults: Sequence[str],
    num_dirs: int,
) -> list[list[Act]]:
    """The activation functions per direction: ``[direction][function index]``."""
    n = len(defaults)
    names = list(names) if names else list(defaults) * num_dirs
    if len(names) == n and num_dirs == 2:
        names = names * 2  # one list given for a bidirectional op: both directions use it
    if len(names) != n * num_dirs:
        raise ValueError(f"expected {n * num_dirs} activations, got {names}")
    it_a, it_b = iter(alphas or ()), iter(betas or ())
    acts: list[Act] = []
    for name in names:
        key = name.lower()
        if key not in _ACTS:
            raise ValueError(f"unsupported activation {name!r}")
        _, takes_a, takes_b, da, db = _ACTS[key]
        a = float(next(it_a, da)) if takes_a else da
        b = float(next(it_b, db)) if takes_b else db
        acts.append((key, a, b))
    return [acts[d * n : (d + 1) * n] for d in range(num_dirs)]


def _apply(acts: Sequence[Act], x, clip):
    """Apply direction d's activation to ``x[d]`` (``x`` has a leading direction axis)."""
    if clip is not None:
        x = jnp.clip(x, -clip, clip)
    if all(a == acts[0] for a in acts):  # the usual case: one function for every direction
        name, a, b = acts[0]
        return _ACTS[name][0](x, a, b)
    return jnp.stack([_ACTS[n][0](x[d], a, b) for d, (n, a, b) in enumerate(acts)])


def _reverse(x, seq_lens):
    """Reverse each sequence in time (axis 0, batch on axis 1) within its own length.

    Applied twice it is the identity, so the same call puts reversed outputs back in place.
    Steps past a sequence's length stay where they are.
    """
    if seq_lens is None:
        return jnp.flip(x, 0)
    t = jnp.arange(x.shape[0])[:, None]
    lens = seq_lens[None, :]
    idx = jnp.where(t < lens, lens - 1 - t, t)
    idx = idx.reshape(idx.shape + (1,) * (x.ndim - 2))
    return jnp.take_along_axis(x, idx, axis=0)


def _recurrence(
    cell_for,
    X,
    W,
    bias,
    states,
    sequence_lens,
    direction,
    layout,
    project=None,
    gates=1,
    separate=True,
):
    """The driver shared by RNN, GRU and LSTM.

    ``cell_for(d)`` gives ``cell(xw_t, states) -> states``, one step for the directions in
    the slice ``d`` (states are ``[directions, batch, hidden]``, the hidden state first). With
    ``separate`` each direction runs as its own scan: the directions are independent, and one
    direction's recurrent weight is half of what a step of both reads (a 512-hidden LSTM's
    4 MB stays in two cores' L2 from step to step, both directions' 8 MB did not: at batch 1
    -20%, NOTES entry 27). Where onnx2jax's kernel runs the step's product (``_packs``), one
    call takes both directions' panels across its threads, and a scan per direction only
    doubled the hand-offs between them (batch 8 +8%). (With the default passes a bidirectional
    node on param weights arrives here already split in two: passes/rnn.py, which also spares
    the per-call slicing of each direction's weights.) The input projection ``X W^T +
    bias`` is one matmul over all steps, outside the scan; only the recurrence is sequential.
    With ``gates > 1`` the projection is split into that many per-gate arrays before the scan
    and ``xw_t`` is their tuple: XLA's CPU fusions that slice gates out of the scan's
    dynamic slice run 3.5x slower (0.15 vs 0.04 ms per LSTM step at 8 x 512; NOTES 17). The
    projection is one GEMM per direction, [T, B, G] as GEMMs write it (NOTES 21).
    ``project(xs)`` replaces that matmul when given (``[D, T, B, I] -> [T, D, B, G]``; the
    quantized LSTM of ops/contrib_quant.py). Returns ``Y`` and the final states, in the op's
    layout.
    """
    if layout:
        X = jnp.swapaxes(X, 0, 1)
    steps = X.shape[0]
    dirs = ["forward", "reverse"] if direction == "bidirectional" else [direction]
    if direction not in ("forward", "reverse", "bidirectional"):
        raise ValueError(f"unknown direction {direction!r}")
    lens = None
    if sequence_lens is not None:
        if isinstance(sequence_lens, np.ndarray) and np.all(sequence_lens == steps):
            lens = None  # every sequence is full length: no masking needed
        else:
            lens = jnp.asarray(sequence_lens).astype(jnp.int32)
    if project is None:
        # One product per direction over all steps, each in the layout a GEMM writes
        # ([T, B, G], row-major): XLA laid the batched product of both directions out as
        # [D, G, T*B], and cutting the gates out of that took transposing copies.
        w = W.astype(X.dtype)
        xw = jnp.stack(
            [
                jnp.einsum("tbi,gi->tbg", X if d == "forward" else _reverse(X, lens), w[i])
                for i, d in enumerate(dirs)
            ],
            axis=1,
        )
    else:
        xw = project(jnp.stack([X if d == "forward" else _reverse(X, lens) for d in dirs]))
    xw = xw + bias[None, :, None, :]
    if gates > 1:
        xw = tuple(jnp.split(xw, gates, axis=-1))

    finals, outs = [], []
    for d in [slice(i, i + 1) for i in range(len(dirs))] if separate else [slice(None)]:
        final_d, ys_d = _scan(
            cell_for(d),
            jax.tree.map(lambda a, d=d: a[:, d], xw),
            tuple(s[d] for s in states),
            lens,
            steps,
        )
        finals.append(final_d)
        outs.append(ys_d)
    final = tuple(jnp.concatenate(parts) for parts in zip(*finals, strict=True))
    ys = jnp.concatenate(outs, axis=1)
    # ys: [T, D, B, H]; put reversed directions back in input order
    Y = jnp.stack(
        [ys[:, i] if d == "forward" else _reverse(ys[:, i], lens) for i, d in enumerate(dirs)],
        axis=1,
    )
    if layout:
        Y = jnp.transpose(Y, (2, 0, 1, 3))
        final = tuple(jnp.swapaxes(s, 0, 1) for s in final)
    return (Y, *final)


def _scan(cell, xw, states, lens, steps):
    """``cell`` over the steps of ``xw``: (final states, hidden states [T, D, B, H])."""
    if lens is None:

        def step(carry, xw_t):
            new = cell(xw_t, carry)
            return new, new[0]

        return jax.lax.scan(step, states, xw)
    valid = (jnp.arange(steps)[:, None] < lens[None, :])[:, None, :, None]  # [T,1,B,1]

    def masked_step(carry, inp):
        xw_t, m = inp
        new = cell(xw_t, carry)
        # past a sequence's end its state freezes and its output is zero
        new = tuple(jnp.where(m, n, c) for n, c in zip(new, carry, strict=True))
        return new, jnp.where(m, new[0], 0)

    return jax.lax.scan(masked_step, states, (xw, valid))


def _packs(R, batch: int) -> bool:
    """Whether each step's product runs on onnx2jax's kernel (see ``_recurrent_product``)."""
    return kernels.takes((batch,), R.dtype) and batch > 1


def _recurrent_product(R, batch: int):
    """``h -> einsum("dbh,dgh->dbg", h, R)``: each step's product with the recurrent weight.

    It has as many rows as the batch, and XLA's dots re-pack ``R`` at every step; with
    onnx2jax's kernel (onnx2jax/_kernels) ``R`` is packed once, before the scan, and each step
    reads the packed panels (NOTES entry 16: the zoo's LSTM at batch 8, 303 -> 227 ms). At
    batch 1 XLA's matrix-vector product is faster (37 vs 46 ms; with a scan per direction,
    entry 27, 32.5 vs 57.6 ms on an AVX-512 CPU), so it keeps that case.
    """
    if not _packs(R, batch):
        return lambda h: jnp.einsum("dbh,dgh->dbg", h, R)
    packed = kernels.pack(jnp.swapaxes(R, 1, 2))  # [dirs, P, hidden, 8]
    # The recurrent weight is read every step and stays in cache: no prefetching.
    return lambda h: kernels.packed_matmul(h, packed, R.shape[1], stream=False)


def _initial(v, num_dirs, batch, hidden, dtype, layout):
    if v is None:
        return jnp.zeros((num_dirs, batch, hidden), dtype)
    v = jnp.asarray(v).astype(dtype)
    return jnp.swapaxes(v, 0, 1) if layout else v


def _dims(X, R, layout):
    return R.shape[0], X.shape[0] if layout else X.shape[1], R.shape[-1]


@register("RNN")
def rnn(
    X,
    W,
    R,
    B=None,
    sequence_lens=None,
    initial_h=None,
    *,
    activation_alpha=None,
    activation_beta=None,
    activations=None,
    clip=None,
    direction="forward",
    hidden_size=None,
    layout=0,
    output_sequence=0,
):
    """https://onnx.ai/onnx/operators/onnx__RNN.html (layout: opset 14)."""
    dt = X.dtype
    nd, batch, hs = _dims(X, R, layout)
    acts = _activations(activations, activation_alpha, activation_beta, ["Tanh"], nd)
    f = [a[0] for a in acts]
    R = jnp.asarray(R).astype(dt)
    bias = jnp.zeros((nd, hs), dt) if B is None else jnp.asarray(B).astype(dt)
    bias = bias[:, :hs] + bias[:, hs:] if B is not None else bias

    def cell_for(d):
        recurrent = _recurrent_product(R[d], batch)

        def cell(xw, states):
            (h,) = states
            return (_apply(f[d], xw + recurrent(h), clip),)

        return cell

    h0 = _initial(initial_h, nd, batch, hs, dt, layout)
    return _recurrence(
        cell_for, X, W, bias, (h0,), sequence_lens, direction, layout, separate=not _packs(R, batch)
    )


@register("GRU")
def gru(
    X,
    W,
    R,
    B=None,
    sequence_lens=None,
    initial_h=None,
    *,
    activation_alpha=None,
    activation_beta=None,
    activations=None,
    clip=None,
    direction="forward",
    hidden_size=None,
    layout=0,
    linear_before_reset=0,
    output_sequence=0,
):
    """https://onnx.ai/onnx/operators/onnx__GRU.html (linear_before_reset: 3, layout: 14)."""
    dt = X.dtype
    nd, batch, hs = _dims(X, R, layout)
    acts = _activations(activations, activation_alpha, activation_beta, ["Sigmoid", "Tanh"], nd)
    f, g = [a[0] for a in acts], [a[1] for a in acts]
    R = jnp.asarray(R).astype(dt)
    if B is None:
        B = jnp.zeros((nd, 6 * hs), dt)
    B = jnp.asarray(B).astype(dt)
    wb, rb = B[:, : 3 * hs], B[:, 3 * hs :]
    # Rb of z and r joins the input projection; Rb of h must stay inside r * (...) when
    # linear_before_reset, and is added there in both variants.
    bias = wb + jnp.concatenate([rb[:, : 2 * hs], jnp.zeros_like(rb[:, 2 * hs :])], axis=1)

    def cell_for(d):
        rbh = rb[d, None, 2 * hs :]
        r_zr = _recurrent_product(R[d, : 2 * hs], batch)
        r_h = _recurrent_product(R[d, 2 * hs :], batch)

        def cell(xw, states):
            (h,) = states
            xz, xr, xh = xw
            rzr = r_zr(h)
            z = _apply(f[d], xz + rzr[..., :hs], clip)
            r = _apply(f[d], xr + rzr[..., hs:], clip)
            if linear_before_reset:
                hh = xh + r * (r_h(h) + rbh)
            else:
                hh = xh + r_h(r * h) + rbh
            hh = _apply(g[d], hh, clip)
            return ((1 - z) * hh + z * h,)

        return cell

    h0 = _initial(initial_h, nd, batch, hs, dt, layout)
    return _recurrence(
        cell_for,
        X,
        W,
        bias,
        (h0,),
        sequence_lens,
        direction,
        layout,
        gates=3,
        separate=not _packs(R, batch),
    )


def lstm_update(gates, c, peep, f, g, hfn, clip, input_forget):
    """One LSTM step from the summed gate pre-activations (i, o, f, c order; one array or a
    tuple of four); returns (h, c).

    ``peep`` is (p_i, p_f, p_o) or None. Shared by LSTM and com.microsoft DynamicQuantizeLSTM.
    """
    if isinstance(gates, tuple):
        gi, go, gf, gc = gates
    else:
        hs = gates.shape[-1] // 4
        gi, go, gf, gc = (gates[..., k * hs : (k + 1) * hs] for k in range(4))
    if peep is not None:
        gi, gf = gi + peep[0] * c, gf + peep[1] * c
    i = _apply(f, gi, clip)
    fg = 1 - i if input_forget else _apply(f, gf, clip)
    c_new = fg * c + i * _apply(g, gc, clip)
    if peep is not None:
        go = go + peep[2] * c_new
    o = _apply(f, go, clip)
    return (o * _apply(hfn, c_new, None), c_new)


@register("LSTM")
def lstm(
    X,
    W,
    R,
    B=None,
    sequence_lens=None,
    initial_h=None,
    initial_c=None,
    P=None,
    *,
    activation_alpha=None,
    activation_beta=None,
    activations=None,
    clip=None,
    direction="forward",
    hidden_size=None,
    input_forget=0,
    layout=0,
    output_sequence=0,
):
    """https://onnx.ai/onnx/operators/onnx__LSTM.html (layout: opset 14).

    Gates are ordered i, o, f, c; peepholes P are i, o, f.
    """
    dt = X.dtype
    nd, batch, hs = _dims(X, R, layout)
    acts = _activations(
        activations, activation_alpha, activation_beta, ["Sigmoid", "Tanh", "Tanh"], nd
    )
    f, g, hfn = ([a[k] for a in acts] for k in range(3))
    R = jnp.asarray(R).astype(dt)
    if B is None:
        bias = jnp.zeros((nd, 4 * hs), dt)
    else:
        B = jnp.asarray(B).astype(dt)
        bias = B[:, : 4 * hs] + B[:, 4 * hs :]
    if P is not None:
        P = jnp.asarray(P).astype(dt)[:, None, :]
        p_i, p_o, p_f = P[..., :hs], P[..., hs : 2 * hs], P[..., 2 * hs :]

    def cell_for(d):
        recurrent = _recurrent_product(R[d], batch)
        peep = (p_i[d], p_f[d], p_o[d]) if P is not None else None

        def cell(xw, states):
            h, c = states
            rec = recurrent(h)
            gates = tuple(x + rec[..., k * hs : (k + 1) * hs] for k, x in enumerate(xw))
            return lstm_update(gates, c, peep, f[d], g[d], hfn[d], clip, input_forget)

        return cell

    h0 = _initial(initial_h, nd, batch, hs, dt, layout)
    c0 = _initial(initial_c, nd, batch, hs, dt, layout)
    separate = not _packs(R, batch)
    return _recurrence(
        cell_for, X, W, bias, (h0, c0), sequence_lens, direction, layout, gates=4, separate=separate
    )
