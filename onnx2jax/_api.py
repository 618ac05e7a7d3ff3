"""The public API: ``load`` an ONNX model into a :class:`Model`, a pytree of params plus a pure graph."""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from . import _compute_dtype, _kernels, _tracer, _tune
from ._analysis import is_buffer, is_param
from ._bounded import bounded_step, count_name
from ._cache import enable_default_cache
from ._compiler import compiler_options
from ._dtypes import canonical, is_numeric
from ._errors import InputError, Onnx2JaxError, StaticValueError, UnsupportedOpsError
from ._ir import Model as IRModel
from ._ir import TensorSpec
from ._loader import ModelSource, load_model, trim_heap
from ._prepare import Prep, find_prep
from ._segments import Break, Breaks, Stage, find_breaks, partition
from ._stages import Staged, run_stages
from ._values import Frozen, as_output, check_params, concrete

Params = dict[str, jax.Array]


@dataclass
class Jits:
    """A program's jitted functions, built on first use."""

    main: Any = None  # the whole graph with prepared weights: what model(...) runs
    prep: Any = None  # params -> the param-only values (_prepare.py)
    stages: Staged | None = None  # with graph breaks: one jit per segment (_stages.py)
    # XLA options for ``main`` that Model.tune chose (empty: _compiler.compiler_options()).
    main_options: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class Program:
    """Everything decided at load time: the plan, signatures, constants and which inputs are static.

    Hashed by identity, so it can be the static part of a pytree and of ``jax.jit``.
    """

    ir: IRModel
    plan: _tracer.Plan
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    constants: dict[str, np.ndarray]
    value_inputs: frozenset[str]  # graph inputs specialised on their value (one compile per value)
    x64: bool
    breaks: tuple[Break, ...] = ()
    # With graph breaks: the jitted segments and host steps, in order (None: one jit).
    stages: tuple[Stage, ...] | None = None
    # Param-only steps the model object runs once per params object (_prepare.py).
    prep: Prep = Prep()
    # Large integer initializers (quantized weights) on the device: non-trainable, so not in
    # ``params``, but passed into every jitted program as arguments rather than embedded.
    buffers: dict[str, jax.Array] = dataclasses.field(default_factory=dict)
    # Lazily built jitted functions, shared by every Model of it.
    jits: Jits = dataclasses.field(default_factory=Jits)
    # jax.default_matmul_precision for every trace of this program (None: JAX's default);
    # resolved from load(precision=...) by _matmul_precision.
    precision: str | None = None
    # False: trace with XLA's dots and convolutions where the kernel passes left packed ops
    # (``shard``: XLA cannot partition the kernels' custom calls; it would gather the weights).
    kernels: bool = True

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.outputs]

    @property
    def string_outputs(self) -> bool:
        return any(o.dtype is not None and o.dtype.kind in "OSU" for o in self.outputs)

    def context(self):
        stack = contextlib.ExitStack()
        if self.x64:
            stack.enter_context(jax.enable_x64(True))
        if self.precision is not None:
            # Read when a dot is traced, so it is baked into every jit (and user trace) of apply.
            stack.enter_context(jax.default_matmul_precision(self.precision))
        if not self.kernels:
            stack.enter_context(_kernels.disabled())
        return stack


@jax.tree_util.register_pytree_node_class
class Model:
    """An imported ONNX model: ``params`` (a dict of weights, the pytree leaves) and a pure graph.

    ``model.apply(params, *inputs, **named_inputs)`` is pure and composes with ``jax.jit``,
    ``jax.grad`` and ``jax.vmap``. ``model(*inputs)`` runs a cached ``jax.jit`` with
    ``model.params`` bound. Both return a tuple of outputs in graph order; use
    :meth:`outputs_dict` for a dict keyed by output name.
    """

    def __init__(self, program: Program, params: Params):
        self._program = program
        self.params = params
        # (params key, prepared values, the params the program reads): see _program_inputs
        self._prepared: tuple[tuple[int, ...], dict[str, Any], dict[str, Any]] | None = None

    # -- pytree: params are leaves, the program is static ------------------------------------
    def tree_flatten(self):
        return (self.params,), self._program

    @classmethod
    def tree_unflatten(cls, program: Program, children):
        return cls(program, children[0])

    # -- signatures ---------------------------------------------------------------------------
    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        """Graph inputs: name, dtype and shape (symbolic dims kept as names)."""
        return self._program.inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        """Graph outputs, in the order ``apply`` returns them."""
        return self._program.outputs

    @property
    def input_names(self) -> list[str]:
        return [s.name for s in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [s.name for s in self.outputs]

    @property
    def opsets(self) -> dict[str, int]:
        return dict(self._program.ir.opsets)

    @property
    def value_inputs(self) -> frozenset[str]:
        """Inputs whose values decide shapes: each distinct value compiles once."""
        return self._program.value_inputs

    @property
    def graph_breaks(self) -> tuple[Break, ...]:
        """Where the graph leaves jit (data-dependent output shapes); empty for one XLA program.

        ``model(...)`` and ``model.apply(...)`` run such graphs as jitted segments with host
        steps between them; each ``Break`` names the node, its op and why.
        """
        return self._program.breaks

    def outputs_dict(self, outputs: tuple[Any, ...]) -> dict[str, Any]:
        """Key a result tuple of ``apply`` or ``__call__`` by output name."""
        return dict(zip(self.output_names, outputs, strict=False))

    def __repr__(self) -> str:
        n = sum(int(np.prod(p.shape)) for p in self.params.values())
        ins = ", ".join(str(s) for s in self.inputs)
        outs = ", ".join(str(s) for s in self.outputs)
        return f"onnx2jax.Model(({ins}) -> ({outs}), {len(self.params)} params / {n:,} values)"

    # -- running ------------------------------------------------------------------------------
    def apply(self, params: Mapping[str, Any], *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        """Run the graph with ``params``; pure, so it can be jitted, differentiated and vmapped.

        A graph with breaks (:attr:`graph_breaks`) runs segment by segment on concrete values;
        under a JAX transformation it is traced whole, which raises ``StaticValueError`` naming
        the break unless its inputs happen to be concrete.
        """
        prog = self._program
        with prog.context():
            bound = _bind(prog, args, kwargs)
            if prog.stages is not None and not _traced(params, bound):
                return run_stages(prog, params, bound, jit=False)
            return _apply_whole(prog, params, bound)

    def __call__(self, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        """Run with ``self.params`` through a cached ``jax.jit`` (one compile per input shape).

        With graph breaks, each segment is its own cached ``jax.jit`` and the break nodes run
        on the host between them.
        """
        prog = self._program
        with prog.context():
            bound = _bind(prog, args, kwargs)
            if not prog.string_outputs:
                _check_jittable(
                    prog, {k: v for k, v in bound.items() if k not in prog.value_inputs}
                )
            if _traced(self.params, bound):
                # Inside the caller's own transformation: trace the graph into it (a nested
                # jit could not take our compiler options, and would add nothing).
                return _apply_whole(prog, self.params, bound)
            if prog.stages is not None:
                return run_stages(prog, self.params, bound, jit=not prog.string_outputs)
            static, dynamic = _split(prog, bound)
            if prog.string_outputs:
                # Strings cannot leave an XLA program; such graphs run eagerly (numeric ops
                # inside still dispatch to XLA one by one).
                return _run(prog, self.params, dynamic, {k: f.value for k, f in static})
            return _jitted(prog)(*self._program_inputs(), dynamic, static)

    def lower(self, *args: Any, **kwargs: Any) -> tuple[Any, tuple[Any, ...]]:
        """Ahead-of-time form of ``model(*args, **kwargs)``: ``(lowered, call_args)``.

        ``lowered`` is the ``jax.stages.Lowered`` of the program ``model(...)`` runs (with
        this model's prepared weights); ``lowered.compile()(*call_args)`` gives what the call
        gives. For graphs without breaks or string outputs (others raise ``Onnx2JaxError``).
        """
        prog = self._program
        if prog.stages is not None or prog.string_outputs:
            raise Onnx2JaxError(
                "lower(): this model runs as several programs (graph breaks or string "
                "outputs); call the model instead"
            )
        with prog.context():
            bound = _bind(prog, args, kwargs)
            static, dynamic = _split(prog, bound)
            call_args = (*self._program_inputs(), dynamic)
            return _jitted(prog).lower(*call_args, static), call_args

    def tune(self, *args: Any, rounds: int = 3, **kwargs: Any):
        """Choose XLA's kernel libraries for this model by timing them on these inputs.

        On CPU, XLA can run matmuls and convolutions with YNNPACK (the default) or its own
        Eigen kernels, and which is faster depends on the model and batch (GPT-2 prefill:
        YNNPACK 1.7x; ViT at batch 8: Eigen 1.2x; convolutions: ``_compiler.candidates``).
        ``tune`` compiles ``model(*args, **kwargs)`` once per choice, times each for ``rounds``
        interleaved rounds, and keeps the fastest for later calls (and :meth:`lower`) of every
        model sharing this program. It also records the choice in the compilation cache folder,
        so later ``load``s of the same model on this machine start with it (``_tune.py``).
        Call it once, with inputs of the shapes you will serve. Elsewhere (GPU, TPU) it has
        nothing to choose. Returns a ``TuneReport`` (``chosen``, ``ms`` per choice).
        """
        return _tune.tune(self, args, kwargs, rounds=rounds)

    def prepare(self, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The param-only values for ``params`` (default ``self.params``): weights laid out for
        the kernels, folded BatchNorms, dequantized weights and the integer buffers.

        Compute it once and pass it to :meth:`apply_prepared` in your own ``jit``/``vmap``
        (a server batching requests, an exported program) so those steps do not rerun per call.
        """
        if params is None or params is self.params:
            return self._prepared_values()
        prog = self._program
        return {**prog.buffers, **_prep_fn(prog)(params)} if prog.prep else dict(prog.buffers)

    def apply_prepared(
        self, params: Mapping[str, Any], prepared: Mapping[str, Any], *args: Any, **kwargs: Any
    ) -> tuple[Any, ...]:
        """:meth:`apply` with the param-only steps already done: ``prepared`` is
        ``model.prepare(params)``. Pure; what ``model(...)`` runs inside its jit.

        Gradients flow to ``params`` only through the steps that read them directly; take
        gradients with :meth:`apply`. Graphs with breaks raise ``Onnx2JaxError``.
        """
        prog = self._program
        if prog.stages is not None:
            raise Onnx2JaxError(
                "apply_prepared(): this graph has breaks and runs as several programs; "
                "call the model or use apply()"
            )
        with prog.context():
            bound = _bind(prog, args, kwargs)
            static = {k: concrete(v) for k, v in bound.items() if k in prog.value_inputs}
            env = dict(prepared)
            env.update({k: v for k, v in bound.items() if k not in prog.value_inputs})
            return _run(prog, params, env, static, skip=frozenset(prog.prep.steps))

    @property
    def pass_report(self):
        """What the graph passes did at load (``onnx2jax.passes.Report``), or None."""
        return self._program.ir.pass_report

    def _prepared_values(self) -> dict[str, Any]:
        """The param-only values (laid-out and folded weights) for ``self.params``."""
        return self._program_inputs()[1]

    def _program_inputs(self) -> tuple[Mapping[str, Any], dict[str, Any]]:
        """What ``model(...)``'s program takes for ``self.params``: the params its steps read
        (``Prep.reads``: a weight that only prep reads stays out) and the param-only values,
        both computed once per params object: replacing ``model.params`` or one of its arrays
        recomputes them."""
        prog = self._program
        if not prog.prep:
            return self.params, prog.buffers
        key = (id(self.params), *(id(v) for v in self.params.values()))
        if self._prepared is None or self._prepared[0] != key:
            check_params(prog, self.params)
            prepared = {**prog.buffers, **_prep_fn(prog)(self.params)}
            reads = {k: v for k, v in self.params.items() if k in prog.prep.reads}
            self._prepared = (key, prepared, reads)
        return self._prepared[2], self._prepared[1]


def _split(prog: Program, bound: Mapping[str, Any]) -> tuple[tuple, dict[str, Any]]:
    """Bound inputs as (value-specialised ones, frozen for a static jit argument; the rest)."""
    static = tuple(sorted((k, Frozen(v)) for k, v in bound.items() if k in prog.value_inputs))
    dynamic = {k: v for k, v in bound.items() if k not in prog.value_inputs}
    return static, dynamic


def _traced(params: Mapping[str, Any], bound: Mapping[str, Any]) -> bool:
    leaves = jax.tree_util.tree_leaves((dict(params), dict(bound)))
    return any(isinstance(x, jax.core.Tracer) for x in leaves)


def _apply_whole(
    prog: Program, params: Mapping[str, Any], bound: dict[str, Any]
) -> tuple[Any, ...]:
    """The whole graph in one trace: value-specialised inputs must be concrete."""
    static = {k: v for k, v in bound.items() if k in prog.value_inputs}
    for k, v in static.items():
        if any(isinstance(x, jax.core.Tracer) for x in jax.tree_util.tree_leaves(v)):
            raise StaticValueError(
                f"input {k!r} decides output shapes, so it must be a concrete value, not "
                f"a traced one. Call the model object (it handles this), or close over a "
                f"numpy value: jax.jit(functools.partial(model.apply, {k}=np.array(...)))"
            )
    dynamic = {k: v for k, v in bound.items() if k not in prog.value_inputs}
    return _run(prog, params, dynamic, {k: concrete(v) for k, v in static.items()})


def _jitted(prog: Program):
    """One ``jax.jit`` per program, stored on it so every Model sharing the program shares it.

    It takes the prepared param-only values and skips the steps that computed them.
    """
    fn = prog.jits.main
    if fn is None:
        skip = frozenset(prog.prep.steps)

        def run_static(params, prepared, dynamic, static):
            env = dict(prepared)
            env.update(dynamic)
            # With prep, params holds only what the steps read, checked when prepared.
            statics = {k: f.value for k, f in static}
            return _run(prog, params, env, statics, skip=skip, check=not prog.prep)

        options = prog.jits.main_options or compiler_options()
        fn = prog.jits.main = jax.jit(run_static, static_argnums=3, compiler_options=options)
    return fn


def _prep_fn(prog: Program):
    """``params -> {name: value}`` of the param-only steps, jitted once per program."""
    fn = prog.jits.prep
    if fn is None:
        steps = [prog.plan.steps[i] for i in prog.prep.steps]

        def prepare(params, buffers):
            env: dict[str, Any] = dict(prog.constants)
            env.update(buffers)
            env.update(params)
            _tracer.run_steps(prog.plan, steps, env)
            return {k: env[k] for k in prog.prep.outputs}

        jitted = jax.jit(prepare, compiler_options=compiler_options())

        def run_prepare(params):
            with prog.context():
                return jitted(params, prog.buffers)

        fn = prog.jits.prep = run_prepare
    return fn


def _run(
    prog: Program,
    params: Mapping[str, Any],
    dynamic: Mapping[str, Any],
    static: Mapping[str, np.ndarray],
    skip: frozenset[int] = frozenset(),
    check: bool = True,
) -> tuple[Any, ...]:
    if check:
        check_params(prog, params)
    env: dict[str, Any] = dict(prog.constants)
    env.update(prog.buffers)  # model(...) passes them in as arguments (in ``dynamic``)
    env.update(params)
    env.update(static)
    env.update(dynamic)
    outs = _tracer.run(prog.plan, env, prog.output_names, skip)
    return tuple(as_output(o) for o in outs)


def _bind(prog: Program, args: tuple, kwargs: dict) -> dict[str, Any]:
    """Match call arguments to graph inputs and check each one's dtype and shape."""
    names = [s.name for s in prog.inputs]
    if len(args) > len(names):
        raise InputError(
            f"got {len(args)} positional inputs, but the model takes {len(names)}: {names}"
        )
    bound = dict(zip(names, args, strict=False))
    for k, v in kwargs.items():
        if k in bound:
            raise InputError(f"input {k!r} given both by position and by name")
        bound[k] = v
    extra = [k for k in bound if k not in names]
    if extra:
        raise InputError(f"unknown input(s) {extra}; the model's inputs are {names}")
    missing = [n for n in names if n not in bound]
    if missing:
        sig = ", ".join(str(s) for s in prog.inputs)
        raise InputError(f"missing input(s) {missing}; the model takes ({sig})")
    dims: dict[str, tuple[str, int]] = {}
    for spec in prog.inputs:
        bound[spec.name] = _check_input(spec, bound[spec.name], dims)
    return bound


def _check_input(spec: TensorSpec, value: Any, dims: dict[str, tuple[str, int]]) -> Any:
    if spec.kind == "tensor" or (
        spec.kind == "unknown" and value is not None and not isinstance(value, (list, tuple))
    ):
        return _check_tensor(spec, value, dims)
    if spec.kind == "sequence":
        if not isinstance(value, (list, tuple)):
            raise InputError(
                f"input {spec.name!r} is a sequence: pass a list of arrays, not a "
                f"{type(value).__name__}"
            )
        return [
            _as_array(spec, v, None, f"element {i} of input {spec.name!r}")
            for i, v in enumerate(value)
        ]
    # Optionals, maps (and untyped inputs given a list or None): their element types are not
    # declared here, but every leaf must still be an array.
    return jax.tree.map(lambda v: _as_array(spec, v, None), value)


def _as_array(spec: TensorSpec, value: Any, dtype: np.dtype | None, what: str = "") -> Any:
    """``value`` as something with a dtype and a shape (numpy, jax or a tracer)."""
    if hasattr(value, "dtype") and hasattr(value, "shape"):
        return value
    what = what or f"input {spec.name!r}"
    if value is None:
        raise InputError(f"{what} is None, but the model needs a tensor: {spec}")
    try:
        return np.asarray(value, dtype=dtype)
    except (TypeError, ValueError, OverflowError) as e:
        want = f"a {dtype} array" if dtype is not None else "an array"
        raise InputError(
            f"{what}: cannot make {want} of the {type(value).__name__} given "
            f"({e}); pass a numpy or jax array: {spec}"
        ) from None


def _check_tensor(spec: TensorSpec, value: Any, dims: dict[str, tuple[str, int]]) -> Any:
    value = _as_array(spec, value, spec.dtype)
    if spec.dtype is not None and value.dtype != spec.dtype:
        # Accept what JAX would compute in anyway (int64 given as int32 with x64 off, numpy's
        # default float64 for a float32 input) and cast; refuse a real mismatch.
        if canonical(spec.dtype) != canonical(value.dtype):
            raise InputError(
                f"input {spec.name!r} has dtype {value.dtype}, but the model declares {spec.dtype}; "
                f"cast it, e.g. x.astype(np.{spec.dtype})"
            )
        if isinstance(value, (np.ndarray, np.generic)):
            value = np.asarray(value).astype(spec.dtype)
        elif value.dtype != canonical(spec.dtype):
            value = value.astype(canonical(spec.dtype))
    if spec.shape is not None:
        shape = tuple(value.shape)
        if len(shape) != len(spec.shape):
            raise InputError(
                f"input {spec.name!r} has rank {len(shape)} (shape {list(shape)}), but the model "
                f"declares rank {len(spec.shape)}: {spec}"
            )
        for axis, (want, got) in enumerate(zip(spec.shape, shape, strict=True)):
            if isinstance(want, int) and want > 0 and want != got:
                raise InputError(
                    f"input {spec.name!r} has size {got} on axis {axis}, but the model fixes it "
                    f"to {want}: {spec}"
                )
            if isinstance(want, str):
                seen = dims.setdefault(want, (spec.name, got))
                if seen[1] != got:
                    raise InputError(
                        f"dimension {want!r} is {got} in input {spec.name!r} but {seen[1]} in "
                        f"input {seen[0]!r}; inputs sharing a symbolic dimension must agree"
                    )
    return value


def _check_jittable(prog: Program, dynamic: Mapping[str, Any]) -> None:
    """Inputs that enter a jitted XLA program must hold numbers (strings stay on the host)."""
    for name, value in dynamic.items():
        for leaf in jax.tree_util.tree_leaves(value):
            if not is_numeric(leaf.dtype):
                spec = next(s for s in prog.inputs if s.name == name)
                raise InputError(
                    f"input {name!r} holds {leaf.dtype} values, which cannot enter a jitted XLA "
                    f"program: the model declares {spec}. Pass numbers, or, for strings, declare "
                    "the input as tensor(string) in the model"
                )


def load(
    source: ModelSource,
    *,
    x64: bool = False,
    base_dir: str | None = None,
    max_sizes: Mapping[str, int] | None = None,
    dynamic_bound: int | None = None,
    max_loop_iterations: int = _tracer.MAX_LOOP_ITERATIONS,
    passes: str | Sequence[str] | None = "default",
    precision: str = "auto",
    dtype: str | None = None,
) -> Model:
    """Load an ONNX model as a :class:`Model`.

    Where an output *shape* depends on values computed at run time (NonZero, Compress, Unique,
    NonMaxSuppression on computed data; a Reshape whose shape is computed from data), the graph
    breaks: ``model(...)`` runs jitted segments with those nodes on the host between them
    (:attr:`Model.graph_breaks` lists them). ``max_sizes``/``dynamic_bound`` keep NonZero,
    Compress and Unique inside one XLA program instead, with padded outputs:

    - the data-dependent axis has exactly N entries (NonZero: ``[rank, N]``; Compress: N
      slices along its axis; Unique: N entries in ``Y``, ``indices`` and ``counts``, while
      ``inverse_indices`` keeps its length); the first ``count`` are the op's results in the
      usual order, the rest are zeros (index 0, value 0, count 0);
    - ``count`` (an int64 scalar: the true number of results, which may exceed N, in which
      case only the first N are kept) is an extra graph output named ``"<node name>/count"``,
      appended after the model's own outputs;
    - downstream ops see the padded tensors as they are: reductions and gathers over the
      padded axis include the zero entries, so mask with the count where that matters.

    Args:
        source: a path, bytes, a binary file object or an ``onnx.ModelProto``. External data is
            read relative to the model's folder (or ``base_dir``); locations that escape that
            folder are refused.
        x64: compute int64/float64 tensors in 64 bits (runs the graph under
            ``jax.enable_x64``). Off by default: they are computed as int32/float32, JAX's default.
        base_dir: folder for external data when ``source`` is not a path.
        max_sizes: bound per node name (e.g. ``{"NonZero_3": 128}``) for NonZero, Compress or
            Unique nodes that would break the graph (``onnx2jax info`` lists them).
        dynamic_bound: the bound for every such node not named in ``max_sizes``.
        max_loop_iterations: the most iterations a Loop may run (default 1,000,000) where its
            condition stays true, so that its trip count alone decides its length; a longer
            one (or one with neither trip count nor an ending condition) raises a NodeError
            naming the node at trace time instead of running for hours, e.g. for a malformed
            trip count such as Cast(inf). Loops whose condition is computed at run time are
            not limited.

        passes: the graph passes to run before tracing (``onnx2jax.passes``): ``"default"``
            (all of them), ``None`` (the graph as written) or a list of pass names such as
            ``["fold_batchnorm", "nhwc"]``. ``model.pass_report`` (and ``onnx2jax info``) says
            what each did. Params keep their ONNX names and values whatever the passes do.
        precision: float32 matmul/conv precision (``jax.default_matmul_precision`` around
            every trace of the model). ``"auto"`` (default): ``"highest"`` on GPU/TPU, whose
            own default (TF32 / bfloat16 passes) departs from onnxruntime by ~1e-3, nothing
            changed on CPU; ``"highest"``; ``"fast"`` (the backend's default: TF32 on recent
            NVIDIA GPUs, bfloat16 passes on TPU); or a ``jax.default_matmul_precision`` name
            (``"bfloat16"``, ``"tensorfloat32"``, ``"float32"``). docs/jax.md compares them.
        dtype: ``"bfloat16"`` or ``"float16"`` to run a float model in that dtype: float params
            are stored in it (saturating: float32's extremes become its largest finite value),
            float ops compute in it, matmuls and convolutions accumulate in float32, and
            outputs come back in their declared dtype. ``None`` (default): the graph's own
            dtypes. Scales of quantization ops keep their precision (docs/jax.md).

    Raises:
        ModelLoadError: unreadable, corrupt or malformed model (cycle, dangling input).
        ExternalDataError: missing or unsafe external data.
        UnsupportedOpsError: lists every unsupported op use, with domain, opset and node.
        Onnx2JaxError: ``max_sizes`` names a node that cannot be bounded.
    """
    if isinstance(max_loop_iterations, bool) or not isinstance(max_loop_iterations, int):
        raise Onnx2JaxError(f"max_loop_iterations must be an int, got {max_loop_iterations!r}")
    matmul_precision = _matmul_precision(precision)
    compute_dtype = _compute_dtype.resolve(dtype)
    enable_default_cache()
    ir = load_model(source, base_dir, _pass_names(passes))
    missing: list[str] = []
    plan = _tracer.build_plan(ir.graph, ir.opsets, missing, max_loop_iterations=max_loop_iterations)
    if missing:
        raise UnsupportedOpsError(missing)
    graph = ir.graph
    found = find_breaks(graph, max_sizes, dynamic_bound)
    constants, params, buffers = {}, {}, {}
    with jax.enable_x64(True) if x64 else contextlib.nullcontext():
        host_views = jax.default_backend() == "cpu"
        for name, arr in graph.initializers.items():
            if is_param(name, arr, found.needed):
                params[name] = _to_device(arr)
            elif is_buffer(name, arr, found.needed):
                buffers[name] = _to_device(arr)
            else:
                constants[name] = arr
                continue
            if host_views:  # one weight at a time, so at most one is held twice
                graph.initializers[name] = _host_view(arr, params.get(name, buffers.get(name)))
        arr = None
        if sum(v.nbytes for v in params.values()) > 16 << 20:
            trim_heap()  # host copies freed above (a model from bytes, BERT-base: -250 MB RSS)
    for s in graph.inputs:
        if s.name in found.value_inputs and s.dtype is not None and s.dtype.kind == "f":
            warnings.warn(
                f"input {s.name!r} decides output shapes (it is a shape-deciding op input, e.g. "
                "Resize scales), so onnx2jax specialises on its value: every distinct value "
                "compiles anew. `onnx2jax info` lists such inputs.",
                stacklevel=2,
            )
    plan, counts = _mark_breaks(plan, found)
    if compute_dtype is not None:
        plan = _compute_dtype.wrap_plan(plan, compute_dtype, graph.outputs, x64)
        params = _compute_dtype.cast_params(params, plan, compute_dtype)
    stages = None
    if found.breaks:
        nodes = [step.node for step in plan.steps]
        outs = [o.name for o in graph.outputs] + [c.name for c in counts]
        stages = partition(
            nodes, found, frozenset(params) | set(buffers), frozenset(constants), outs
        )
    prep = Prep()
    if stages is None:
        nodes = [step.node for step in plan.steps]
        outs = [o.name for o in graph.outputs] + [c.name for c in counts]
        prep = find_prep(
            nodes, frozenset(params) | set(buffers), frozenset(constants), found.needed, outs
        )
    prog = Program(
        ir,
        plan,
        tuple(graph.inputs),
        tuple(graph.outputs) + counts,
        constants,
        found.value_inputs,
        x64,
        found.breaks,
        stages,
        prep,
        buffers=buffers,
        precision=matmul_precision,
    )
    if stages is None:
        _tune.recall(prog, params)  # a choice Model.tune recorded on this machine
    return Model(prog, params)


def _to_device(arr: np.ndarray) -> jax.Array:
    """``jnp.asarray(arr)``, aliasing a read-only array (the loader's: nothing writes it).

    On CPU an aligned array then becomes the device buffer as it is (no copy: BERT-base
    0.5 s and 418 MB less at load); elsewhere, or unaligned, it is copied as before.
    """
    if arr.flags.writeable:
        return jnp.asarray(arr)
    return jax.device_put(arr, may_alias=True)


def _host_view(arr: np.ndarray, value: jax.Array) -> np.ndarray:
    """``arr`` as a read-only view of the CPU device array made from it, where equal.

    The IR keeps every initializer (``model.ir``, ``onnx2jax info``, subgraphs); as separate
    numpy arrays they would hold each weight twice for the model's life (BERT-base: +418 MB).
    """
    if value.dtype != arr.dtype or value.shape != arr.shape:
        return arr  # x64 off: int64/float64 became 32-bit on the device; keep the original
    return np.asarray(value)  # zero-copy on CPU


_PRECISIONS = ("auto", "highest", "fast", "bfloat16", "tensorfloat32", "float32")


def _matmul_precision(precision: str) -> str | None:
    """``load(precision=...)`` as a ``jax.default_matmul_precision`` value (None: leave JAX's)."""
    if precision not in _PRECISIONS:
        raise Onnx2JaxError(
            f"precision={precision!r} is not one of {', '.join(map(repr, _PRECISIONS))}; "
            "use 'auto' (float32-exact on GPU/TPU) or 'fast'"
        )
    if precision == "auto":
        # CPU dots are float32-exact already; accelerators default to TF32 / bfloat16 passes.
        return None if jax.default_backend() == "cpu" else "highest"
    return None if precision == "fast" else precision


def _pass_names(passes: str | Sequence[str] | None) -> tuple[str, ...]:
    from ._kernels import _ffi as kernels
    from .passes import KERNEL_PASSES, resolve

    try:
        names = resolve(passes)
    except ValueError as e:
        raise Onnx2JaxError(str(e)) from None
    if not kernels.available():  # their ops only pay with onnx2jax's CPU kernels
        names = tuple(n for n in names if n not in KERNEL_PASSES)
    return names


def _mark_breaks(plan: _tracer.Plan, found: Breaks) -> tuple[_tracer.Plan, tuple[TensorSpec, ...]]:
    """The plan with bounded nodes padded and break nodes carrying their error; count outputs."""
    steps = list(plan.steps)
    counts = []
    taken = {v for n in plan.graph.nodes for v in (*n.inputs, *n.outputs)}
    taken |= {s.name for s in plan.graph.inputs} | set(plan.graph.initializers)
    for i, size in found.bounds.items():
        name = count_name(steps[i].node)
        if name in taken:
            raise Onnx2JaxError(
                f"{steps[i].node.describe()}: its count output {name!r} would "
                "shadow a value of the graph; rename the node to bound it"
            )
        steps[i] = bounded_step(steps[i], size)
        counts.append(TensorSpec(name, np.dtype(np.int64), ()))
    for b in found.breaks:
        step = steps[b.index]
        # Every input the break reads must be concrete, e.g. a Loop's condition too.
        slots = set(step.static_inputs) | {
            j for j, v in enumerate(step.node.inputs) if v in b.reads
        }
        steps[b.index] = dataclasses.replace(
            step, static_inputs=tuple(sorted(slots)), break_note=_break_note(b, found)
        )
    used = plan.used | {c.name for c in counts}
    return dataclasses.replace(plan, steps=steps, used=used), tuple(counts)


def _break_note(b: Break, found: Breaks) -> str:
    """What to tell a user who traces a graph break under their own jax transformation."""
    others = ", ".join(repr(x.node) for x in found.breaks)
    if b.kind == "host" and b.op_type in ("NonZero", "Compress", "Unique"):
        bounded = (
            f", or load with max_sizes={{{b.node!r}: N}} (or dynamic_bound=N) to pad its "
            "outputs to N entries plus a count and keep one XLA program"
        )
    else:
        bounded = ""
    return (
        f"node {b.node!r} ({b.op_type}) is a graph break: {b.reason}. A jax transformation "
        f"of model.apply (jax.jit, grad, vmap) cannot trace across it. Call the model object "
        f"instead (model(...) runs the jitted segments and the host steps){bounded}. "
        f"Graph breaks of this model: {others}."
    )
