"""Generator: a fixed-size functional KV cache and on-device generation for exported decoders."""

from __future__ import annotations

import functools
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from . import InputError, Model, _kernels, compiler_options, load
from ._compiler import candidates
from ._tune import TuneReport, time_choices
from .passes import kv_cache as _kv

_ROLES = (
    "input_ids",
    "attention_mask",
    "position_ids",
    "cache_position",
    "total_sequence_length",
    "logits",
)
DEFAULT_CAPACITY = 512


def bucket(n: int) -> int:
    """The capacity bucket for ``n`` positions: powers of two up to 256, then multiples of 256.

    Coarse enough that prompts of different lengths share one compiled program, fine enough that
    the masked slots beyond the sequence stay a small share of each step's attention work.
    """
    if n <= 256:
        return max(16, 1 << (max(n, 1) - 1).bit_length())
    return -(-n // 256) * 256


@dataclass(frozen=True)
class _Layout:
    """Which graph inputs and outputs play which role, found once at construction."""

    pairs: tuple[tuple[str, str], ...]  # (past input, present output)
    roles: dict[str, str | None]  # role -> graph name (None: the graph has no such input)
    axis: int  # the sequence axis of the cache buffers
    shapes: dict[str, tuple[int, ...]]  # past -> buffer shape without batch and sequence
    dtypes: dict[str, np.dtype]  # past and role inputs -> dtype
    total_shape: tuple[int, ...] = ()  # the total_sequence_length input's shape ([] or [1])


class Generator:
    """On-device generation with a fixed-size, functional KV cache for an exported decoder.

    The decoder is a step graph that takes the cached keys/values as *past* inputs and returns
    the grown *present* ones. The cache is a pytree of buffers allocated once at a capacity and
    masked past each row's length; a step writes only the new positions (a graph pass turns
    ``present = Concat(past, new)`` into an in-place update, see ``passes/kv_cache.py``), and
    the whole prefill + decode loop is one jitted ``lax.while_loop``.

    Args:
        decoder: path, bytes, ``onnx.ModelProto`` or :class:`onnx2jax.Model` of the decoder step.
        prefill: optional prompt graph without past inputs (e.g. a "without past" export),
            returning the same present outputs; default: the decoder processes the prompt.
        capacity: cache positions; default: the prompt plus ``max_new_tokens`` rounded up to a
            bucket (:func:`bucket`) per ``generate`` call.
        names: overrides of the naming conventions: ``{"pairs": {past: present, ...},
            "input_ids": ..., "attention_mask": ..., "position_ids": ..., "cache_position":
            ..., "logits": ...}`` (a role mapped to None: the graph has no such input).

    Raises:
        InputError: the graph is not a decoder with past inputs (the message says what was
            looked for), or ``names`` does not match it.
    """

    def __init__(self, decoder, *, prefill=None, capacity: int | None = None, names=None):
        if capacity is not None and (not isinstance(capacity, int) or capacity < 1):
            raise InputError(f"Generator: capacity must be a positive int, got {capacity!r}")
        self.capacity = capacity
        names = dict(names or {})
        model = decoder if isinstance(decoder, Model) else _load(decoder)
        self._layout = _layout(model, names)
        self._model = model
        self.params = model.params
        # A graph that writes its new keys/values into a past of fixed size itself (onnxruntime's
        # shared-buffer GroupQueryAttention) is fed the buffers as they are.
        self.shared_buffer = self._shared_fits()
        # Otherwise the decode step (one token) runs the rewritten graph, which reads the fixed
        # buffer in place; prompt chunks run the graph as written (see _append_step for why).
        self._inplace = None
        if not self.shared_buffer and not isinstance(decoder, Model):
            self._inplace = _rewritten(decoder, self._layout)
        if self._inplace is not None and set(self._inplace.params) == set(model.params):
            self._inplace.params = model.params  # one copy of the weights
        if self._inplace is not None and not self._inplace_fits():
            self._inplace = None
        self._prefill = None
        self.prefill_params: dict[str, Any] = {}
        if prefill is not None:
            self._prefill = prefill if isinstance(prefill, Model) else _load(prefill)
            self._prefill_names = _check_prefill(self._prefill, self._layout)
            self.prefill_params = self._prefill.params
        roles = self._layout.roles
        positions = roles["position_ids"] or roles["cache_position"]
        if not self.shared_buffer and not (positions and roles["attention_mask"]):
            self._check_positions()
        self._compile_with(compiler_options())

    def _compile_with(self, options: dict[str, Any]) -> None:
        """(Re)create the jits of ``step`` and ``generate`` with these XLA options."""
        self.step = jax.jit(self._step, donate_argnums=(1,), compiler_options=options)
        self._run = jax.jit(
            self._generate, static_argnames=("n_new", "capacity", "mode"), compiler_options=options
        )

    def tune(self, input_ids, max_new_tokens: int = 32, *, rounds: int = 3, **kwargs):
        """Choose XLA's dot library for generation by timing ``generate`` on this prompt.

        As :meth:`onnx2jax.Model.tune`: on CPU the decode step's small matmuls may run faster
        on Eigen than on YNNPACK (GPT-2's step at batch 8: 61 vs 83 ms, benchmarks/NOTES.md
        12), and which wins depends on the model and batch. Compiles ``generate(input_ids,
        max_new_tokens, **kwargs)`` once per choice, times them in interleaved rounds and keeps
        the fastest for ``generate`` and ``step``. Returns a ``TuneReport``.
        """
        options = candidates(convolutions=False)
        if len(options) < 2:
            return TuneReport(next(iter(options)))
        jits = {}
        for name, opts in options.items():
            self._compile_with(opts)
            self.generate(input_ids, max_new_tokens, **kwargs)  # compiles this choice
            jits[name] = (self.step, self._run)

        def run(name: str) -> None:
            self.step, self._run = jits[name]
            self.generate(input_ids, max_new_tokens, **kwargs)

        ms = time_choices(run, list(jits), rounds=rounds, seconds=0.3)
        chosen = min(ms, key=ms.get)
        self.step, self._run = jits[chosen]
        return TuneReport(chosen, ms)

    # -- the cache and one step ----------------------------------------------------------------
    @property
    def pairs(self) -> tuple[tuple[str, str], ...]:
        """The ``(past input, present output)`` pairs, in graph order."""
        return self._layout.pairs

    @property
    def rewritten(self) -> bool:
        """Whether decode steps run the in-place rewritten graph (else past + Concat, sliced)."""
        return self._inplace is not None

    def init_cache(self, batch: int, capacity: int | None = None) -> dict[str, jax.Array]:
        """Zeroed cache buffers ``{past input name: [batch, ..., capacity, ...]}``.

        ``capacity`` defaults to the Generator's, else ``DEFAULT_CAPACITY`` (512).
        """
        cap = capacity or self.capacity or DEFAULT_CAPACITY
        lay = self._layout
        out = {}
        for past, _ in lay.pairs:
            shape = list(lay.shapes[past])
            shape.insert(0, batch)
            shape.insert(lay.axis, cap)
            out[past] = jnp.zeros(shape, lay.dtypes[past])
        return out

    def _step(self, params, cache, token_ids, positions):
        """``(logits [batch, t, vocab], cache)`` after writing ``token_ids`` at ``positions``."""
        token_ids = jnp.asarray(token_ids)
        positions = jnp.asarray(positions).astype(jnp.int32)
        if token_ids.ndim != 2 or positions.shape != token_ids.shape[:1]:
            raise InputError(
                f"step: token_ids must be [batch, t] and positions [batch], got "
                f"{token_ids.shape} and {positions.shape}"
            )
        if token_ids.shape[1] == 1 and self._inplace is not None:
            return self._inplace_step(params, cache, token_ids, positions)
        return self._chunk_step(params, cache, token_ids, positions)

    def _chunk_step(self, params, cache, token_ids, positions):
        if self.shared_buffer:
            return self._shared_step(params, cache, token_ids, positions)
        return self._append_step(params, cache, token_ids, positions)

    def _check_positions(self) -> None:
        """Refuse a graph that derives positions from its past's length (no position_ids or
        cache_position input): fed a buffer, it would place every token at the capacity; or
        one without an attention_mask input that attends over every past slot (transformers'
        exporter leaves the mask out when its sample prompt has no padding): it would attend
        over the buffer's unwritten slots. Probed numerically: the same two tokens with
        buffers of 16 and 32 slots must give the same logits (the unwritten slots masked)."""
        ids = jnp.asarray([[1, 2]], jnp.int32)
        run = jax.jit(self._chunk_step)
        got = [run(self.params, self.init_cache(1, c), ids, jnp.zeros((1,), jnp.int32))[0]
               for c in (16, 32)]  # fmt: skip
        a, b = (np.asarray(g, np.float64) for g in got)
        if not np.allclose(a, b, rtol=1e-3, atol=1e-3 * (1 + np.abs(a).max())):
            lay = self._layout
            if lay.roles["position_ids"] or lay.roles["cache_position"]:
                raise InputError(
                    "Generator: this decoder has no attention_mask input and its output depends "
                    "on the past's length: it attends over every past slot, so fed a fixed-size "
                    "cache it would attend over the unwritten ones. Export it with an "
                    "attention_mask input (transformers' exporter keeps the mask only when the "
                    "sample prompt has padding: pass a left-padded attention_mask)"
                )
            raise InputError(
                "Generator: this decoder has no position_ids (or cache_position) input and its "
                "output depends on the past's length, so it derives positions from it; fed a "
                "fixed-size cache it would see every token at the cache's capacity. Export it "
                "with a position_ids input (e.g. pass position_ids to the model when exporting)"
            )

    def _shared_fits(self) -> bool:
        """Whether the graph, fed the buffers as its past and a mask as long as them, returns
        presents of the buffers' size (it writes into its past: no copy, no rewrite)."""
        cache = jax.eval_shape(lambda: self.init_cache(1, 16))
        for t in (1, 2):
            args = (self.params, cache, jnp.zeros((1, t), jnp.int32), jnp.zeros((1,), jnp.int32))
            try:
                logits, new = jax.eval_shape(self._shared_step, *args)
            except Exception:  # noqa: BLE001 - any failure to trace means: not this graph
                return False
            if any(new[k].shape != v.shape for k, v in cache.items()) or logits.shape[1] != t:
                return False
        return True

    def _shared_step(self, params, cache, token_ids, positions):
        # The graph writes the t new entries into its past at positions[b] + j: the mask covers
        # the buffer, valid up to and including the new tokens (GroupQueryAttention derives
        # seqlens_k and total_sequence_length from it).
        capacity = next(iter(cache.values())).shape[self._layout.axis]
        t = token_ids.shape[1]
        key_mask = jnp.arange(capacity, dtype=jnp.int32)[None] < (positions + t)[:, None]
        cache_position = positions[:, None] + jnp.arange(t, dtype=jnp.int32)
        feeds, _ = self._feeds(token_ids, positions, key_mask, cache_position)
        feeds.update(cache)
        out = self._model.outputs_dict(self._model.apply(params, **feeds))
        lay = self._layout
        return out[lay.roles["logits"]], {past: out[present] for past, present in lay.pairs}

    def _inplace_fits(self) -> bool:
        """Whether the rewritten graph traces with a buffer as its key axis (abstractly, no
        compile). Graphs that size their masks from ``past length + t`` (transformers' mask
        helpers) do not: their decode steps run the graph as written instead."""
        cache = jax.eval_shape(lambda: self.init_cache(1, 16))
        args = (self.params, cache, jnp.zeros((1, 1), jnp.int32), jnp.zeros((1,), jnp.int32))
        try:
            logits, new = jax.eval_shape(self._inplace_step, *args)
        except Exception:  # noqa: BLE001 - any failure to trace means: not this graph
            return False
        same = all(new[k].shape == v.shape for k, v in cache.items())
        return same and tuple(logits.shape[:2]) == (1, 1)

    def _feeds(self, token_ids, positions, key_mask, cache_position):
        lay = self._layout
        t = token_ids.shape[1]
        pos = positions[:, None] + jnp.arange(t, dtype=jnp.int32)  # [batch, t]
        feeds = {lay.roles["input_ids"]: token_ids.astype(lay.dtypes["input_ids"])}
        if lay.roles["attention_mask"]:
            feeds[lay.roles["attention_mask"]] = key_mask.astype(lay.dtypes["attention_mask"])
        if lay.roles["position_ids"]:
            ids = jnp.maximum(pos, 0).astype(lay.dtypes["position_ids"])
            feeds[lay.roles["position_ids"]] = ids
        if lay.roles["cache_position"]:
            feeds[lay.roles["cache_position"]] = cache_position.astype(lay.dtypes["cache_position"])
        if lay.roles["total_sequence_length"]:
            # GroupQueryAttention's present length: the keys the graph sees (numpy, so that it
            # stays a trace-time constant; the loader specialises on its value).
            total = np.full(lay.total_shape, key_mask.shape[1], lay.dtypes["total_sequence_length"])
            feeds[lay.roles["total_sequence_length"]] = total
        return feeds, pos

    def _append_step(self, params, cache, token_ids, positions):
        # The graph as written: it attends over Concat(buffer, new), so its own causal logic
        # (often derived from shapes, the new tokens last) stays right for chunks of any length;
        # the buffer's unwritten slots and the prompt's left padding are masked out.
        lay = self._layout
        capacity = next(iter(cache.values())).shape[lay.axis]
        t = token_ids.shape[1]
        slots = jnp.arange(capacity, dtype=jnp.int32)[None] < positions[:, None]
        pos = positions[:, None] + jnp.arange(t, dtype=jnp.int32)
        key_mask = jnp.concatenate([slots, pos >= 0], axis=1)
        feeds, pos = self._feeds(token_ids, positions, key_mask, capacity + jnp.arange(t))
        feeds.update(cache)
        out = self._model.outputs_dict(self._model.apply(params, **feeds))
        new_cache = {}
        for past, present in lay.pairs:
            new = lax.slice_in_dim(out[present], capacity, capacity + t, axis=lay.axis)
            new_cache[past] = _write(cache[past], new, positions, lay.axis)
        return out[lay.roles["logits"]], new_cache

    def _inplace_step(self, params, cache, token_ids, positions):
        lay = self._layout
        capacity = next(iter(cache.values())).shape[lay.axis]
        key_mask = jnp.arange(capacity, dtype=jnp.int32)[None] <= positions[:, None]
        last = jnp.full((1,), capacity - 1, jnp.int32)  # where the graph thinks the token sits
        feeds, _ = self._feeds(token_ids, positions, key_mask, last)
        for past, buffer in cache.items():
            # The past input now only carries a length (C - 1, so that the graph's own
            # "past + 1" is C); XLA drops the unused slice.
            feeds[past] = lax.slice_in_dim(buffer, 0, capacity - 1, axis=lay.axis)
            feeds[past + _kv.BUFFER_SUFFIX] = buffer
        feeds[_kv.WRITE_POSITION] = positions
        out = self._inplace.outputs_dict(self._inplace.apply(params, **feeds))
        return out[lay.roles["logits"]], {past: out[present] for past, present in lay.pairs}

    def _prefill_step(self, pparams, cache, token_ids, positions):
        lay = self._layout
        t = token_ids.shape[1]
        pos = positions[:, None] + jnp.arange(t, dtype=jnp.int32)
        feeds, _ = self._feeds(token_ids, positions, pos >= 0, jnp.arange(t))
        names = set(self._prefill.input_names)
        feeds = {k: v for k, v in feeds.items() if k in names}
        out = self._prefill.outputs_dict(self._prefill.apply(pparams, **feeds))
        names = self._prefill_names
        new_cache = {p: _write(cache[p], out[names[q]], positions, lay.axis) for p, q in lay.pairs}
        return out[lay.roles["logits"]], new_cache

    # -- generation ----------------------------------------------------------------------------
    def generate(
        self,
        input_ids,
        max_new_tokens: int,
        *,
        attention_mask=None,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int = 0,
        eos_token_id: int | None = None,
    ) -> np.ndarray:
        """Generate ``max_new_tokens`` tokens per row, on the device, in one jitted loop.

        Args:
            input_ids: int ``[batch, prompt_len]``; rows shorter than the longest are left-padded.
            max_new_tokens: tokens to generate per row.
            attention_mask: ``[batch, prompt_len]``, 0 on the left padding, 1 on the prompt.
            temperature: 0 for greedy (argmax); else logits are divided by it and sampled.
            top_k: sample among the k most likely tokens only.
            top_p: sample from the smallest set of most likely tokens whose probability
                reaches ``top_p`` (nucleus sampling).
            seed: seed of the ``jax.random`` key (sampling is reproducible per seed).
            eos_token_id: a row stops at this token and repeats it from then on; when every
                row has stopped, the loop ends.

        Returns:
            numpy int ``[batch, max_new_tokens]``.
        """
        ids, mask = _check_prompt(input_ids, attention_mask)
        n = _positive(max_new_tokens, "max_new_tokens")
        if top_k is not None:
            top_k = _positive(top_k, "top_k")
        if top_p is not None and not 0.0 < float(top_p) <= 1.0:
            raise InputError(f"generate: top_p must be in (0, 1], got {top_p!r}")
        top_p = 1.0 if top_p is None else float(top_p)
        if float(temperature) < 0:
            raise InputError(f"generate: temperature must be >= 0, got {temperature!r}")
        # Prompts are left-padded to a bucket too, so that prompt lengths within one bucket
        # share a compiled program; padded positions are masked and never written.
        width = bucket(ids.shape[1])
        ids = np.pad(ids, ((0, 0), (width - ids.shape[1], 0)))
        mask = np.pad(mask, ((0, 0), (width - mask.shape[1], 0)))
        need = int(mask.sum(1).max()) + n
        capacity = self.capacity or bucket(width + n)
        if need > capacity:
            raise InputError(
                f"generate: the longest prompt ({need - n} tokens) plus max_new_tokens ({n}) "
                f"needs {need} cache positions, but the Generator's capacity is {capacity}; "
                "create it with a larger capacity (or capacity=None to size it per call)"
            )
        out = self._run(
            self.params,
            self.prefill_params,
            jnp.asarray(ids, jnp.int32),
            jnp.asarray(mask, jnp.int32),
            jax.random.key(int(seed), impl="rbg"),  # compiles faster than threefry
            # Sampling settings are traced values: changing them does not recompile.
            jnp.float32(temperature),
            jnp.int32(top_k or 0),
            jnp.float32(top_p),
            jnp.int32(-1 if eos_token_id is None else eos_token_id),
            n_new=n,
            capacity=capacity,
            # Which sampler is compiled in (greedy, sampling, sampling with top-k/top-p): each
            # costs compile time, so a program holds only the one asked for.
            mode="greedy" if temperature == 0 else "filtered" if top_k or top_p < 1 else "sample",
        )
        return np.asarray(out).astype(np.int64)

    def _generate(
        self, params, pparams, ids, mask, key, temp, top_k, top_p, eos, *, n_new, capacity, mode
    ):
        sampling = {"temperature": temp, "top_k": top_k, "top_p": top_p, "mode": mode}
        batch = ids.shape[0]
        lengths = mask.sum(1)
        windows = decode_windows(ids.shape[1], capacity)
        cache = self.init_cache(batch, windows[0])
        first = lengths - ids.shape[1]  # position of column 0: minus the row's left padding
        if self._prefill is not None:
            logits, cache = self._prefill_step(pparams, cache, ids, first)
        else:
            logits, cache = self._chunk_step(params, cache, ids, first)
        # The body samples from the logits it carries, then runs the step that gives the next
        # ones: one sampling site in the program (each costs compile time), at the price of one
        # step past the last token (its slot is within the capacity).
        out = jnp.full((batch, n_new), jnp.maximum(eos, 0), jnp.int32)
        done = jnp.zeros((batch,), bool)

        def cond(state, window):
            i, _, _, pos, done, _ = state
            go = (i < n_new) & ~jnp.all(done)
            # A step writes slot `pos`: the phase ends when a row's next slot leaves its window.
            return go if window == capacity else go & (jnp.max(pos) < window)

        def body(state):
            i, cache, logits, pos, done, out = state
            token = _sample(logits, jax.random.fold_in(key, i), **sampling)
            token = jnp.where(done, eos, token)  # eos -1: no eos, never done
            done = done | (token == eos)
            out = lax.dynamic_update_slice(out, token[:, None], (jnp.int32(0), i))
            logits, cache = self._step(params, cache, token[:, None], pos)
            return i + 1, cache, logits[:, -1], pos + 1, done, out

        state = (jnp.int32(0), cache, logits[:, -1], lengths.astype(jnp.int32), done, out)
        # One loop per window: a step attends over its whole buffer, so the buffer grows in a
        # few steps (each doubling copies the cache once) instead of every token paying for
        # the full capacity (at 768 slots a GPT-2 step cost 2.5x one at 32; NOTES, issue 10).
        for window in windows:
            i, cache, logits, pos, done, out = state
            cache = {k: _grow(v, window, self._layout.axis) for k, v in cache.items()}
            state = (i, cache, logits, pos, done, out)
            state = lax.while_loop(functools.partial(cond, window=window), body, state)
        return state[5]

    def compiled_programs(self) -> int:
        """How many programs ``generate`` has compiled: one per batch size, prompt bucket,
        capacity and ``max_new_tokens`` (sampling settings are run-time values)."""
        return self._run._cache_size()


def _sample(logits, key, *, temperature, top_k, top_p, mode):
    """The next token per row from ``logits [batch, vocab]``; the settings are traced scalars
    (top_k 0 and top_p 1: no restriction), ``mode`` says which sampler to compile."""
    logits = logits.astype(jnp.float32)
    if mode == "greedy":
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)

    def sample(logits):
        logits = logits / temperature

        def restrict(logits):
            # One sort serves both filters.
            ordered = jnp.sort(logits, axis=-1)[:, ::-1]
            k = jnp.clip(top_k, 1, logits.shape[-1])
            kth = lax.dynamic_index_in_dim(ordered, k - 1, axis=1)
            kth = jnp.where(top_k > 0, kth, -jnp.inf)
            probs = jax.nn.softmax(jnp.where(ordered < kth, -jnp.inf, ordered), axis=-1)
            before = jnp.cumsum(probs, axis=-1) - probs  # mass of the tokens ranked above
            keep = (before < top_p) & (ordered >= kth)
            cutoff = jnp.min(jnp.where(keep, ordered, jnp.inf), axis=-1, keepdims=True)
            return jnp.where(logits < cutoff, -jnp.inf, logits)

        if mode == "filtered":
            logits = restrict(logits)
        return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)

    return sample(logits)


def decode_windows(width: int, capacity: int, phases: int = 4) -> list[int]:
    """The cache sizes a ``generate`` loop runs through: ``capacity / 2**k`` for ``k <
    phases`` (multiples of 16) above the prompt's padded ``width``, ending at ``capacity``.

    Each window is one compiled loop body, so there are few; each at most doubles the last,
    so a step never attends over more than twice the slots it needs (after the first).
    Below 128 slots attending over the whole buffer costs little: one window.
    """
    if capacity < 128:
        return [capacity]
    sizes = {max(16, -(-(capacity >> k) // 16) * 16) for k in range(phases)}
    return sorted(w for w in sizes if width < w < capacity) + [capacity]


def _grow(buffer, size: int, axis: int):
    """``buffer`` zero-padded to ``size`` positions along ``axis`` (unchanged if that size)."""
    extra = size - buffer.shape[axis]
    if extra == 0:
        return buffer
    widths = [(0, 0)] * buffer.ndim
    widths[axis] = (0, extra)
    return jnp.pad(buffer, widths)


def _write(buffer, new, positions, axis):
    """``new`` written into ``buffer`` at ``positions[b] + j`` along ``axis`` (pads dropped)."""
    # The scatter of ai.onnx2jax::KvCacheUpdate (onnx2jax/ops/kv_cache.py), which the
    # rewritten graph runs; features do not import ops, hence the copy.
    capacity, t = buffer.shape[axis], new.shape[axis]
    slots = positions[:, None] + jnp.arange(t, dtype=jnp.int32)
    slots = jnp.where((slots >= 0) & (slots < capacity), slots, capacity)  # dropped
    index = [slice(None)] * buffer.ndim
    index[0], index[axis] = jnp.arange(buffer.shape[0], dtype=jnp.int32)[:, None], slots
    value = jnp.moveaxis(new.astype(buffer.dtype), axis, 1)
    return buffer.at[tuple(index)].set(value, mode="drop")


# -- finding the decoder's roles ---------------------------------------------------------------


def _layout(model: Model, names: dict) -> _Layout:
    specs = {s.name: s for s in model.inputs}
    outs = [s.name for s in model.outputs]
    unknown = set(names) - {"pairs", *_ROLES}
    if unknown:
        raise InputError(f"Generator: unknown names= key(s) {sorted(unknown)}; use {_ROLES}")
    given = names.get("pairs")
    if given is not None:
        pairs = list(given.items()) if isinstance(given, Mapping) else [tuple(p) for p in given]
        for past, present in pairs:
            if past not in specs or present not in outs:
                raise InputError(
                    f"Generator: names pair {past!r} -> {present!r}: the graph has no input "
                    f"{past!r} or no output {present!r}; inputs {list(specs)}, outputs {outs}"
                )
    else:
        pairs = _kv.find_pairs(specs, outs)
    if not pairs:
        raise InputError(
            f"Generator: this graph is not a decoder with past inputs: looked for "
            f"{_kv.LOOKED_FOR}; its inputs are {list(specs)} and its outputs {outs}. Export the "
            "model with its cache (e.g. use_cache=True, a 'with past' export), or name the "
            "pairs: Generator(model, names={'pairs': {past_input: present_output, ...}})"
        )
    pasts = {p for p, _ in pairs}
    roles: dict[str, str | None] = {}
    for role in _ROLES:
        if role in names:
            name = names[role]
            if name is not None and name not in (specs if role != "logits" else outs):
                raise InputError(f"Generator: names[{role!r}] = {name!r} is not in the graph")
            roles[role] = name
        elif role == "logits":
            rest = [o for o in outs if o not in {q for _, q in pairs}]
            roles[role] = "logits" if "logits" in outs else (rest[0] if rest else None)
        else:
            roles[role] = role if role in specs else None
    if roles["input_ids"] is None:
        ints = [n for n, s in specs.items() if n not in pasts and s.dtype and s.dtype.kind in "iu"]
        ints = [n for n in ints if n not in roles.values()]
        roles["input_ids"] = ints[0] if len(ints) == 1 else None
    if roles["input_ids"] is None or roles["logits"] is None:
        raise InputError(
            f"Generator: cannot tell which input takes the token ids or which output is the "
            f"logits (inputs {list(specs)}, outputs {outs}); pass names={{'input_ids': ..., "
            "'logits': ...}}"
        )
    other = [n for n in specs if n not in pasts and n not in roles.values()]
    if other:
        raise InputError(
            f"Generator: the decoder has input(s) {other} that are neither token ids, "
            "attention_mask, position_ids, cache_position, total_sequence_length nor a past; "
            "map them with names=..."
        )
    axis, shapes = _cache_axis(specs, dict(pairs), model)
    # What JAX computes in (int64 inputs run as int32 unless the model was loaded with x64).
    canon = jax.dtypes.canonicalize_dtype
    dtypes = {p: canon(specs[p].dtype or np.float32) for p in pasts}
    for role in _ROLES[:-1]:
        if roles[role]:
            dtypes[role] = canon(specs[roles[role]].dtype or np.int64)
    total = roles["total_sequence_length"]
    total_shape = () if total is None else tuple(d if isinstance(d, int) else 1
                                                 for d in _dims(specs[total].shape) or ())  # fmt: skip
    lay = _Layout(tuple(pairs), roles, axis, shapes, dtypes, total_shape)
    if any(not isinstance(d, int) for s in shapes.values() for d in s):
        lay = _Layout(lay.pairs, roles, axis, _probe_dims(model, lay), dtypes, total_shape)
    return lay


def _probe_dims(model: Model, lay: _Layout) -> dict[str, tuple[int, ...]]:
    """The buffers' fixed dims where the graph leaves them symbolic (onnxruntime-genai writes
    ``kv_cache_dim``): read off the presents of an abstract one-token step with an empty past."""
    sds = jax.ShapeDtypeStruct
    feeds = {lay.roles["input_ids"]: sds((1, 1), lay.dtypes["input_ids"])}
    for role, shape in (
        ("attention_mask", (1, 1)),
        ("position_ids", (1, 1)),
        ("cache_position", (1,)),
    ):
        if lay.roles[role]:
            feeds[lay.roles[role]] = sds(shape, lay.dtypes[role])
    for past, _ in lay.pairs:
        shape = [d if isinstance(d, int) else 1 for d in lay.shapes[past]]
        shape.insert(0, 1)
        shape.insert(lay.axis, 0)
        feeds[past] = sds(tuple(shape), lay.dtypes[past])
    static = {}  # trace-time constants: one key for one token with an empty past
    if lay.roles["total_sequence_length"]:
        role = "total_sequence_length"
        static[lay.roles[role]] = np.full(lay.total_shape, 1, lay.dtypes[role])
    try:
        out = jax.eval_shape(
            lambda p, f: model.outputs_dict(model.apply(p, **f, **static)), model.params, feeds
        )
    except Exception as e:  # noqa: BLE001 - reported with what to do
        raise InputError(
            f"Generator: the past inputs' shapes {dict(lay.shapes)} leave dims besides batch and "
            f"the sequence axis ({lay.axis}) symbolic, and a one-token step with an empty past "
            f"did not reveal them ({type(e).__name__}: {e}); give the past inputs fixed dims"
        ) from e
    shapes = {}
    for past, present in lay.pairs:
        dims = list(out[present].shape)
        del dims[lay.axis]
        shapes[past] = tuple(int(d) for d in dims[1:])
    return shapes


def _cache_axis(specs, pairs: dict[str, str], model: Model):
    """The sequence axis of the past buffers and each buffer's other (fixed) dims."""
    outs = {s.name: s for s in model.outputs}
    axes = set()
    shapes = {}
    for past, present in pairs.items():
        shape = _dims(specs[past].shape)
        if shape is None or len(shape) < 3:
            raise InputError(f"Generator: past input {past!r} needs a declared shape of rank >= 3")
        out_shape = _dims(outs[present].shape)
        symbolic = [i for i, d in enumerate(shape) if i > 0 and not isinstance(d, int)]
        differ = [
            i
            for i in symbolic
            if out_shape is not None and len(out_shape) == len(shape) and out_shape[i] != shape[i]
        ]
        named = [i for i in symbolic if re.search(r"seq|past|len|cache", str(shape[i]), re.I)]
        axis = (differ or named or symbolic or [len(shape) - 2])[0]
        if len(symbolic) > 1 and not (differ or named):
            axis = len(shape) - 2  # [batch, heads, seq, head_dim], the common layout
        rest = [d for i, d in enumerate(shape) if i not in (0, axis)]
        axes.add(axis)
        shapes[past] = tuple(rest)
    if len(axes) != 1:
        raise InputError(f"Generator: the past inputs disagree on the sequence axis ({axes})")
    return axes.pop(), shapes


def _dims(shape):
    """``shape`` with numeric dim names as ints: transformers' exporter declares fixed dims as
    dim_params "2", "16" on its cache inputs (and as numbers on the outputs)."""
    if shape is None:
        return None
    return tuple(int(d) if isinstance(d, str) and d.isdigit() else d for d in shape)


def _check_prefill(prefill: Model, lay: _Layout) -> dict[str, str]:
    """The prefill graph's output for each present (checked): the present's own name, or
    without transformers' ``output.`` prefix (its prefill graph has no past, so no clash)."""
    outs = set(prefill.output_names)
    names = {}
    for _, q in lay.pairs:
        bare = q.removeprefix("output.")
        names[q] = q if q in outs or bare not in outs else bare
    missing = [q for q in names.values() if q not in outs]
    if missing or lay.roles["logits"] not in outs:
        raise InputError(
            f"Generator: the prefill graph must return the decoder's present outputs and "
            f"logits; it lacks {missing or [lay.roles['logits']]} (its outputs: {sorted(outs)})"
        )
    known = {v for k, v in lay.roles.items() if v and k != "logits"}
    other = [n for n in prefill.input_names if n not in known]
    if other:
        raise InputError(
            f"Generator: the prefill graph has input(s) {other} besides the token ids, "
            "attention_mask, position_ids and cache_position; it should take no past"
        )
    return names


def _load(source, **kwargs) -> Model:
    """``load`` for the Generator's own models, without the few-row packing: the Generator runs
    ``model.apply`` inside its jitted loops, where prep's steps run on every call, and the
    packing made generation slower there (1,123 vs 1,446 tok/s, benchmarks/generate.py at batch
    4). Until the loops take prepared weights, its loads skip it."""
    with _kernels.disabled():
        return load(source, **kwargs)


def _rewritten(source, lay: _Layout) -> Model | None:
    """The decoder with ``present = Concat(past, new)`` rewritten in place, or None where the
    graph computes a present otherwise (the decode step then runs the graph as written)."""
    import onnx_ir as ir

    base_dir = None
    if isinstance(source, (str, os.PathLike)):
        model = ir.load(source)
        base_dir = os.path.dirname(os.path.abspath(source))
    elif isinstance(source, (bytes, bytearray)):
        with tempfile.TemporaryDirectory() as tmp:  # onnx-ir reads files, not bytes
            path = os.path.join(tmp, "decoder.onnx")
            with open(path, "wb") as f:
                f.write(source)
            model = ir.load(path)
    elif hasattr(source, "SerializeToString"):
        model = ir.from_proto(source)
    else:
        return None  # a file object: let load() read it once, as written
    try:  # value types where the graph does not declare them (an Attention mask's, say)
        model = ir.passes.common.ShapeInferencePass()(model).model
    except Exception:  # noqa: BLE001 - ops onnx cannot infer: rewrite with what is declared
        pass
    rewrite = _kv.FixedKvCache(lay.pairs)
    if not rewrite(model).modified or any(a != lay.axis for a in rewrite.axes.values()):
        return None
    return _load(ir.to_proto(model), base_dir=base_dir)


def _check_prompt(input_ids, attention_mask) -> tuple[np.ndarray, np.ndarray]:
    ids = np.asarray(input_ids)
    if ids.ndim != 2 or ids.dtype.kind not in "iu" or ids.shape[1] == 0:
        raise InputError(
            f"generate: input_ids must be a non-empty int array [batch, prompt_len], got "
            f"{ids.dtype} {list(ids.shape)}"
        )
    if attention_mask is None:
        return ids, np.ones(ids.shape, np.int32)
    mask = np.asarray(attention_mask)
    if mask.shape != ids.shape:
        raise InputError(
            f"generate: attention_mask has shape {list(mask.shape)}, input_ids {list(ids.shape)}"
        )
    mask = (mask != 0).astype(np.int32)
    lengths = mask.sum(1)
    left_padded = (mask == (np.arange(ids.shape[1]) >= ids.shape[1] - lengths[:, None])).all()
    if not left_padded or (lengths == 0).any():
        raise InputError(
            "generate: attention_mask must left-pad: per row zeros, then ones, with at least "
            "one token (pad shorter prompts on the left)"
        )
    return ids, mask


def _positive(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(f"generate: {what} must be a positive int, got {value!r}")
    return int(value)
