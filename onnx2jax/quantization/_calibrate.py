"""Calibration: activation ranges from running the float model through onnx2jax under jit.

The tensors to calibrate become extra graph outputs; each batch of samples runs as one jitted,
vmapped call that returns only per-tensor statistics (min/max, or a fixed-range histogram), so
activations never leave the device. ``minmax`` needs one pass over the data; ``percentile``
and ``entropy`` take a second pass to histogram each tensor over the range found in the first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

BINS = 2048  # histogram bins, as onnxruntime's HistogramCalibrater
PERCENTILE = 99.999  # share of |x| kept by ``percentile`` (onnxruntime's default)
BATCH = 16  # samples per jitted call


def _batches(samples: Iterable[Mapping[str, Any]], size: int) -> Iterator[list[dict]]:
    batch: list[dict] = []
    for s in samples:
        batch.append({k: np.asarray(v) for k, v in s.items()})
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _progress(it: Iterable, total: int | None, desc: str) -> Iterable:
    """tqdm's bar when it is installed (extra ``quantize``), else the plain iterable."""
    try:
        from tqdm.auto import tqdm
    except ImportError:  # the bar is a nicety; calibration works without it
        return it
    return tqdm(it, total=total, desc=desc, unit="batch", leave=False)


def _stacked_fn(model, reduce: Callable, names: Sequence[str]):
    """jit(vmap(model.apply)) over a stack of samples, reduced to statistics per tensor."""
    import jax

    import onnx2jax

    def run(params, stacked, extra):
        outs = jax.vmap(lambda s: model.apply(params, **s))(stacked)
        d = model.outputs_dict(outs)
        return [reduce(d[n], e) for n, e in zip(names, extra, strict=True)]

    return jax.jit(run, compiler_options=onnx2jax.compiler_options())


def _minmax(x, _):
    import jax.numpy as jnp

    x = x.astype(jnp.float32)
    # non-finite values (an attention mask's -inf, a NaN from bad data) say nothing about
    # the range the integers must cover; a tensor with none finite gets (0, 0)
    ok = jnp.isfinite(x)
    lo = jnp.min(jnp.where(ok, x, jnp.inf))
    hi = jnp.max(jnp.where(ok, x, -jnp.inf))
    return jnp.where(jnp.any(ok), jnp.stack([lo, hi]), jnp.zeros(2, jnp.float32))


def _histogram(x, rng):
    import jax.numpy as jnp

    lo, hi = rng[0], rng[1]
    x = x.astype(jnp.float32).reshape(-1)
    width = jnp.maximum(hi - lo, 1e-30) / BINS
    ok = jnp.isfinite(x)
    idx = jnp.clip(jnp.floor(jnp.where(ok, x - lo, 0.0) / width), 0, BINS - 1).astype(jnp.int32)
    return jnp.bincount(idx, weights=ok.astype(jnp.float32), length=BINS)


def collect(
    model,
    samples: Callable[[], Iterable[Mapping[str, Any]]],
    names: Sequence[str],
    method: str,
    total: int | None,
) -> dict[str, tuple[float, float]]:
    """Calibrated (lo, hi) ranges of the ``names`` outputs of ``model`` (an onnx2jax.Model).

    ``samples`` returns a fresh iterable of input dicts (a second pass needs one).
    """
    nb = None if total is None else -(-total // BATCH)
    stats = _run(model, samples, names, _minmax, [np.zeros(2, np.float32)] * len(names), nb)
    mins = np.min([s[:, 0] for s in stats], axis=0) if stats else None
    maxs = np.max([s[:, 1] for s in stats], axis=0) if stats else None
    if mins is None:
        raise ValueError("calibration is empty: give at least one input dict")
    if method == "minmax":
        return {n: (float(lo), float(hi)) for n, lo, hi in zip(names, mins, maxs, strict=True)}
    ranges = [np.array([lo, hi], np.float32) for lo, hi in zip(mins, maxs, strict=True)]
    hists = _run(model, samples, names, _histogram, ranges, nb, desc="histograms")
    out = {}
    for i, n in enumerate(names):
        h = np.sum([s[i] for s in hists], axis=0).astype(np.float64)
        lo, hi = float(mins[i]), float(maxs[i])
        out[n] = _percentile(h, lo, hi) if method == "percentile" else _entropy(h, lo, hi)
    return out


def _run(model, samples, names, reduce, extra, nb, desc="calibration") -> list:
    """Per batch: a list over ``names`` of statistics (stacked: [batch][name] -> array)."""
    import jax

    from onnx2jax import StaticValueError

    fn = _stacked_fn(model, reduce, names)
    results = []
    for batch in _progress(_batches(samples(), BATCH), nb, desc):
        stacked = jax.tree.map(lambda *xs: np.stack(xs), *batch)
        try:
            stats = fn(model.params, stacked, extra)
        except StaticValueError:  # graph breaks: run sample by sample through the model object
            stats = _eager(model, batch, names, reduce, extra)
        results.append(np.stack([np.asarray(s) for s in stats]))
    return results


def _eager(model, batch, names, reduce, extra):
    """Fallback for graphs that cannot be traced whole (graph breaks): ``model(...)`` per sample."""
    import jax.numpy as jnp

    outs = [model.outputs_dict(model(**s)) for s in batch]
    return [
        reduce(jnp.stack([jnp.asarray(o[n]) for o in outs]), e)
        for n, e in zip(names, extra, strict=True)
    ]


def _centres(lo: float, hi: float) -> np.ndarray:
    edges = np.linspace(lo, hi, BINS + 1)
    return (edges[:-1] + edges[1:]) / 2


def _percentile(h: np.ndarray, lo: float, hi: float) -> tuple[float, float]:
    """Clip both tails so that ``PERCENTILE`` % of the values stay inside."""
    c = np.cumsum(h) / max(h.sum(), 1.0)
    tail = (100.0 - PERCENTILE) / 200.0
    edges = np.linspace(lo, hi, BINS + 1)
    a = edges[int(np.searchsorted(c, tail, side="left"))]
    b = edges[min(int(np.searchsorted(c, 1.0 - tail, side="left")) + 1, BINS)]
    return float(min(a, 0.0) if lo < 0 else lo), float(b)


def _entropy(h: np.ndarray, lo: float, hi: float, levels: int = 128) -> tuple[float, float]:
    """TensorRT's KL-divergence threshold on |x|: the clip that loses least information.

    The signed histogram is folded onto |x| (with the larger of |lo|, |hi| as its range); each
    candidate threshold keeps the first i bins, squeezes them into ``levels`` levels and
    compares with the kept distribution (the clipped tail added to the last bin).
    """
    amax = max(abs(lo), abs(hi))
    if amax == 0:
        return 0.0, 0.0
    c = _centres(lo, hi)
    a, _ = np.histogram(np.abs(c), bins=BINS, range=(0, amax), weights=h)
    best, best_kl = BINS, np.inf
    for i in range(levels, BINS + 1, 16):
        p = a[:i].copy()
        p[-1] += a[i:].sum()
        nz = p > 0
        # q quantizes the in-range counts only: each of ``levels`` chunks spreads its sum
        # evenly over its non-empty bins
        starts = np.array([c[0] for c in np.array_split(np.arange(i), levels)])
        sizes = np.diff(np.append(starts, i))
        sums = np.add.reduceat(a[:i], starts)
        filled = np.add.reduceat((a[:i] > 0).astype(np.float64), starts)
        per = np.divide(sums, filled, out=np.zeros_like(sums), where=filled > 0)
        q = np.where(a[:i] > 0, np.repeat(per, sizes), 0.0)
        # smoothing, as TensorRT does: a bin p has and q lacks gets a small share, not inf
        q[nz & (q == 0)] = 1e-4 * q.sum() / max(int(nz.sum()), 1)
        pn, qn = p / p.sum(), q / q.sum()
        kl = float(np.sum(pn[nz] * np.log(pn[nz] / qn[nz])))
        if kl < best_kl:
            best, best_kl = i, kl
    t = amax * best / BINS
    return float(max(lo, -t)), float(min(hi, t))


def random_samples(inputs, n: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """``n`` random input dicts for a model's input specs (floats N(0, 1), symbolic dims 1)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        s = {}
        for spec in inputs:
            shape = [d if isinstance(d, int) and d >= 0 else 1 for d in spec.shape]
            dt = np.dtype(spec.dtype)
            if dt.kind == "f":
                s[spec.name] = rng.standard_normal(shape).astype(dt)
            elif dt.kind == "b":
                s[spec.name] = rng.integers(0, 2, shape).astype(bool)
            else:
                s[spec.name] = rng.integers(0, 8, shape).astype(dt)
        out.append(s)
    return out
