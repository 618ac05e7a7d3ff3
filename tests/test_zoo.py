"""Parity of real models with onnxruntime: the model zoo (benchmarks/zoo/build.py) and the
checked-in INT8 models (tests/models/make_quantized.py).

Three groups:

- **Checked-in INT8 models** (``tests/models/*_int8_*.onnx``): need onnxruntime only, so they
  run in CI, where torch is not installed.
- **The small zoo** (``build.py --small``: every zoo architecture with fewer layers and
  channels): built by the test session itself into a temporary folder; skipped, with the
  reason, when torch/transformers/onnxscript are not installed.
- **The full-size zoo**: ``@pytest.mark.slow`` (deselected by default); run with
  ``python -m pytest -m slow tests/test_zoo.py``. Uses (and builds if missing)
  ``benchmarks/zoo/cache/full``.

Every model runs at shapes other than its export-time ones (``ZooModel.test_dims``).

The reference. Float models: onnxruntime with graph optimizations disabled (each node its own
kernel) and one intra-op thread (its LSTM quantizes each thread's share of the batch on its own
otherwise). INT8 models: the same kernels, run node by node (``reference_values``), except the
nodes where onnxruntime departs from the ONNX spec on this CPU: uint8 x int8 products on x86
without VNNI, whose int16 pair sums saturate (``int8_reference.node_follows_spec``,
docs/int8.md). Those nodes run on the exact reference (``tests/int8_reference.py``: numpy int64
products), and the test output says how many there were. On a CPU with VNNI every node runs on
onnxruntime. Node by node equals the whole-graph run bit for bit when no node is replaced
(checked by ``test_reference_values_equal_onnxruntime``).

What is asserted:

- float32 models: rtol 1e-4, and atol 1e-4 * max |expected| (a normwise 1e-4: near zero an
  elementwise relative bound means nothing). Checked against a float64 run of the same graph,
  the largest gap (ResNet-50, 2.2e-5 of the output range) is float32 rounding that onnxruntime
  shows as much as onnx2jax does.
- INT8 models, node by node: every node with an integer output, fed the reference's inputs,
  reproduces the reference's output exactly (``replay_integer_nodes``, eager). This is the
  integer semantics check: QuantizeLinear/DynamicQuantizeLinear of the same float values, every
  QLinear*/Integer op, and the com.microsoft contrib ops. For the checked-in models the same
  holds in the jitted model with every value exposed, for each integer node whose inputs there
  equal the reference's bit for bit (``check_jitted_intermediates``).
- INT8 models, end to end, jitted (``model(...)``): integer outputs exactly. A float output
  that is the DequantizeLinear of an all-integer path (no other DequantizeLinear in the graph)
  is within one quantization step of the reference's. Where float ops sit between quantizers
  (QDQ graphs run Conv/Gemm in float, dynamic graphs requantize LayerNorm/GELU outputs, some
  QOperator graphs keep a float ReduceMean or LayerNorm), XLA and onnxruntime round those
  floats differently in the last ulp; a value next to a rounding tie then quantizes one step
  apart (a *flip*), and the flip travels on through the network. A flip changes one element of
  one activation by one step, while the INT8 model's own error against float32 is the sum of
  every element's rounding error (up to half a step each) at every quantizer; so a handful of
  flips moves an output by much less than the INT8 error. Those outputs are held, per output,
  to the **largest** difference (not a mean, which would hide outliers):

  * max |onnx2jax - reference| <= ``MAX_RATIO`` x max |reference INT8 - onnxruntime float32|;
  * where the output is a DequantizeLinear (its step known): max <= ``MAX_STEPS`` steps. A
    flip upstream moves the value before the final quantizer by less than a step, so the output
    lands on the same or the adjacent step; two steps leave room for two flips adding up.

  Seen on an AVX2 CPU: at most 1 step (ResNet-50 INT8, small zoo) and at most 0.24 x the INT8
  error (GPT-2 dynamic, small zoo; below 0.05 everywhere else, mostly float32 ulps).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import sys

import numpy as np
import onnx
import onnx.helper as oh
import pytest
from int8_reference import node_follows_spec, reference_evaluator

import onnx2jax
from onnx2jax._dtypes import to_onnx_dtype
from onnx2jax._loader import load_model
from onnx2jax._registry import lookup

ort = pytest.importorskip("onnxruntime")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = os.path.join(ROOT, "tests", "models")


def _load_zoo():
    spec = importlib.util.spec_from_file_location(
        "zoo_build", os.path.join(ROOT, "benchmarks", "zoo", "build.py")
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    return module


zoo = _load_zoo()

RTOL = 1e-4
NORM_TOL = 1e-4  # atol = NORM_TOL * max |expected|
# Float outputs with float ops between quantizers (see the module docstring):
MAX_RATIO = 0.5  # max |ours - reference| / max |reference INT8 - onnxruntime float32|
MAX_STEPS = 2  # max |ours - reference| in quantization steps, for DequantizeLinear outputs


def reference_session(model) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = 1
    so.log_severity_level = 3  # exporters leave unused initializers; onnxruntime warns per file
    data = model if isinstance(model, bytes) else model.SerializeToString()
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])


@functools.lru_cache(maxsize=1)
def _loaded(path: str) -> tuple[onnx2jax.Model, ort.InferenceSession, onnx.ModelProto]:
    proto = onnx.load(path)
    return onnx2jax.load(proto), reference_session(proto), proto


def _node_model(
    node: onnx.NodeProto, values: dict, initializers: set[str], proto: onnx.ModelProto
) -> onnx.ModelProto:
    """``node`` alone: inputs that are initializers in ``proto`` stay initializers (kernels may
    need them constant), the others become graph inputs."""
    graph_inputs, inits = [], []
    for name in dict.fromkeys(i for i in node.input if i):
        v = np.asarray(values[name])
        if name in initializers:
            inits.append(onnx.numpy_helper.from_array(v, name))
        else:
            graph_inputs.append(oh.make_tensor_value_info(name, to_onnx_dtype(v.dtype), v.shape))
    outputs = [oh.make_value_info(o, onnx.TypeProto()) for o in node.output if o]
    graph = oh.make_graph([node], "node", graph_inputs, outputs, inits)
    return oh.make_model(graph, opset_imports=proto.opset_import, ir_version=proto.ir_version)


def reference_values(
    proto: onnx.ModelProto, feeds: dict[str, np.ndarray], *, replace: bool = True
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Every value of the graph, computed node by node (in graph order): onnxruntime runs each
    node on its own, except (with ``replace``) the nodes whose integer product onnxruntime
    computes against the spec on this CPU (uint8 x int8 without VNNI), which the exact reference
    (``int8_reference``) runs. Returns the values and the names of the replaced nodes."""
    initializers = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}
    values = {**initializers, **feeds}
    replaced = []
    for node in proto.graph.node:
        single = _node_model(node, values, set(initializers), proto)
        inputs = {i.name: values[i.name] for i in single.graph.input}
        dtypes = [np.asarray(values[i]).dtype if i else None for i in node.input]
        if not replace or node_follows_spec(node.op_type, dtypes):
            out = reference_session(single).run(None, inputs)
        else:
            out = reference_evaluator(single).run(None, inputs)
            replaced.append(node.name or node.op_type)
        values.update(zip([o for o in node.output if o], out, strict=True))
    return values, replaced


def _dequantize_steps(proto: onnx.ModelProto) -> dict[str, float]:
    """Graph outputs computed by a DequantizeLinear with a constant scale: their (largest)
    quantization step."""
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}
    outputs = {o.name for o in proto.graph.output}
    return {
        n.output[0]: float(np.max(inits[n.input[1]]))
        for n in proto.graph.node
        if n.op_type == "DequantizeLinear" and n.output[0] in outputs and n.input[1] in inits
    }


def closed_output_steps(proto: onnx.ModelProto) -> dict[str, float]:
    """Graph outputs computed by an all-integer path, with their quantization step: outputs of
    a DequantizeLinear, in a graph whose every DequantizeLinear is such a final one."""
    outputs = {o.name for o in proto.graph.output}
    dq = [n for n in proto.graph.node if n.op_type == "DequantizeLinear"]
    dynamic = any(n.op_type == "DynamicQuantizeLinear" for n in proto.graph.node)
    if dynamic or not dq or any(n.output[0] not in outputs for n in dq):
        return {}
    return _dequantize_steps(proto)


def check_end_to_end(
    path: str,
    feeds: dict[str, np.ndarray],
    kind: str,
    float_path: str | None = None,
    values: dict[str, np.ndarray] | None = None,
) -> dict[str, str]:
    """Run onnx2jax jitted (``model(...)``) on ``feeds`` and assert the bounds of the module
    docstring against onnxruntime (float models) or ``values`` (INT8 models: the
    ``reference_values`` of the same feeds).

    ``float_path`` is the float32 model an INT8 one was made from (for the INT8 error scale).
    Returns a short summary per output (max abs / rel error) for reports.
    """
    model, sess, proto = _loaded(path)
    names = [o.name for o in proto.graph.output]
    if kind == "float":
        expected = sess.run(None, feeds)
    else:
        assert values is not None, f"{path}: INT8 models are checked against reference_values"
        expected = [values[n] for n in names]
    got = model(**feeds)
    assert len(got) == len(expected)
    closed = closed_output_steps(proto) if kind != "float" else {}
    steps = _dequantize_steps(proto) if kind != "float" else {}
    reference = None
    summary = {}
    for i, (name, e, g) in enumerate(zip(names, expected, got, strict=True)):
        g = np.asarray(g)
        where = f"{os.path.basename(path)} output {name!r}"
        assert g.shape == e.shape, f"{where}: shape {g.shape} != {e.shape}"
        assert g.dtype == e.dtype, f"{where}: dtype {g.dtype} != {e.dtype}"
        if e.dtype.kind in "iub":
            np.testing.assert_array_equal(g, e, err_msg=where)
            summary[name] = "exact"
            continue
        diff = np.abs(g.astype(np.float64) - e)
        norm = float(np.abs(e).max())
        summary[name] = f"max abs {diff.max():.2e} ({diff.max() / max(norm, 1e-30):.1e} of max|y|)"
        if kind == "float":
            np.testing.assert_allclose(g, e, rtol=RTOL, atol=NORM_TOL * norm, err_msg=where)
        elif name in closed:
            n = diff.max() / closed[name]
            summary[name] += f", {n:.0f} quantization steps"
            assert n <= 1 + 1e-3, f"{where}: {n:.2f} quantization steps apart (all-integer path)"
        else:
            assert float_path is not None, f"{where}: needs the float model for its error scale"
            if reference is None:
                reference = reference_session(onnx.load(float_path)).run(None, feeds)
            q = float(np.abs(e.astype(np.float64) - reference[i]).max())
            ratio = float(diff.max()) / max(q, 1e-30)
            summary[name] += f", {ratio:.2f} x INT8 error"
            assert ratio <= MAX_RATIO, (
                f"{where}: max error {diff.max():.3g} vs the reference is {ratio:.2f} x the INT8 "
                f"model's own max error vs float32 ({q:.3g}); bound {MAX_RATIO}"
            )
            if name in steps:
                n = diff.max() / steps[name]
                summary[name] += f", {n:.0f} quantization steps"
                big = int(np.sum(diff > (MAX_STEPS + 1e-3) * steps[name]))
                assert not big, (
                    f"{where}: {big} of {diff.size} values more than {MAX_STEPS} quantization "
                    f"steps from the reference (max {n:.2f})"
                )
    return summary


def with_all_outputs(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose every node output is also a graph output (types where onnx infers them)."""
    proto = onnx.shape_inference.infer_shapes(proto)
    types = {vi.name: vi.type for vi in proto.graph.value_info}
    existing = {o.name for o in proto.graph.output}
    for node in proto.graph.node:
        for o in node.output:
            if o and o not in existing:
                proto.graph.output.append(oh.make_value_info(o, types.get(o, onnx.TypeProto())))
                existing.add(o)
    return proto


def _is_int(v) -> bool:
    return np.asarray(v).dtype.kind in "iub"


def _assert_same_ints(where: str, got, want) -> None:
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, f"{where}: shape {got.shape} != {want.shape}"
    bad = np.argwhere(got.astype(np.int64) != want.astype(np.int64))
    assert not len(bad), (
        f"{where}: {len(bad)} of {want.size} values differ from the reference's, first at "
        f"{bad[0].tolist()}: {got[tuple(bad[0])]} != {want[tuple(bad[0])]}"
    )


def replay_integer_nodes(path: str, values: dict[str, np.ndarray]) -> int:
    """Every node with an integer output, fed the reference's inputs (``values``, from
    ``reference_values``), gives the reference's output exactly (eager). Returns how many
    nodes were checked."""
    ir = load_model(onnx.load(path))
    values = {**values, **ir.graph.initializers}
    checked = 0
    for node in ir.graph.nodes:
        outs = [o for o in node.outputs if o]
        if (
            not outs
            or any(o not in values for o in outs)
            or not any(_is_int(values[o]) for o in outs)
        ):
            continue
        opset = ir.opsets.get(node.domain, 1)
        impl = lookup(node.domain, node.op_type, opset)
        if impl is None or impl.takes_ctx or any(i and i not in values for i in node.inputs):
            continue
        args = [values[i] if i else None for i in node.inputs]
        with np.errstate(all="ignore"):  # the BERT QOperator mask: inf scales, NaN (as in ort)
            result = impl.fn(*args, **node.attrs)
        result = result if isinstance(result, tuple) else (result,)
        for o, r in zip(node.outputs, result, strict=False):
            if o and _is_int(values[o]):
                where = f"{os.path.basename(path)}: {node.describe()} output {o!r}"
                _assert_same_ints(where, r, values[o])
        checked += 1
    return checked


def check_jitted_intermediates(
    path: str, feeds: dict[str, np.ndarray], values: dict[str, np.ndarray]
) -> tuple[int, int]:
    """The jitted model with every value exposed as an output: each node with an integer
    output whose inputs equal the reference's bit for bit gives the reference's output exactly.
    A node whose input differs (a float op upstream rounded differently in the last ulp) is
    skipped: its arithmetic is covered by ``replay_integer_nodes``. Returns (checked, skipped)."""
    proto = with_all_outputs(onnx.load(path))
    got = dict(zip([o.name for o in proto.graph.output], onnx2jax.load(proto)(**feeds)))
    checked = skipped = 0
    for node in proto.graph.node:
        outs = [o for o in node.output if o]
        if not outs or not any(_is_int(values[o]) for o in outs):
            continue
        same = True
        for i in (i for i in node.input if i in got):
            g, v = np.asarray(got[i]), np.asarray(values[i])
            same &= g.shape == v.shape and np.array_equal(
                g.astype(v.dtype), v, equal_nan=v.dtype.kind == "f"
            )
        if not same:
            skipped += 1
            continue
        for o in outs:
            if _is_int(values[o]):
                where = (
                    f"{os.path.basename(path)}: jitted {node.op_type} {node.name!r} output {o!r}"
                )
                _assert_same_ints(where, got[o], values[o])
        checked += 1
    return checked, skipped


# -- checked-in INT8 models (CI: onnxruntime only) ----------------------------------------------


def image_feeds(batch, height, width, seed=0):
    rng = np.random.default_rng(seed)
    return {"input": rng.standard_normal((batch, 3, height, width), dtype=np.float32)}


def bert_feeds(batch, seq, seed=0):
    rng = np.random.default_rng(seed)
    mask = np.ones((batch, seq), np.int64)
    if batch > 1:
        mask[1, seq - 3 :] = 0
    tt = np.zeros((batch, seq), np.int64)
    tt[:, seq // 2 :] = 1
    return {
        "input_ids": rng.integers(0, 100, (batch, seq)),
        "attention_mask": mask,
        "token_type_ids": tt,
    }


CHECKED_IN = {
    # name: (kind, float model, feeds); export-time shapes were batch 2, 32x32, 8 tokens
    "resnet_int8_dynamic": ("int8-dynamic", "resnet_torchscript", lambda: image_feeds(3, 40, 48)),
    "resnet_int8_qdq": ("int8-qdq", "resnet_torchscript", lambda: image_feeds(3, 40, 48)),
    "resnet_int8_qop": ("int8-qop", "resnet_torchscript", lambda: image_feeds(3, 40, 48)),
    "bert_int8_dynamic": ("int8-dynamic", "bert_torchscript", lambda: bert_feeds(3, 11)),
    "bert_int8_qop": ("int8-qop", "bert_torchscript", lambda: bert_feeds(3, 11)),
}


@functools.lru_cache(maxsize=1)
def _checked_in(name: str):
    """path, kind, float model path, feeds and reference values of a checked-in INT8 model."""
    path = os.path.join(MODELS, f"{name}.onnx")
    assert os.path.isfile(path), f"{path} is missing: run tests/models/make_quantized.py"
    kind, base, make = CHECKED_IN[name]
    feeds = make()
    values, replaced = reference_values(onnx.load(path), feeds)
    return path, kind, os.path.join(MODELS, f"{base}.onnx"), feeds, values, replaced


@pytest.mark.parametrize("name", sorted(CHECKED_IN))
def test_checked_in_int8_model(name, record_property):
    """End to end (jitted) and every integer node replayed (eager) against
    ``reference_values``: onnxruntime, with its uint8 x int8 nodes replaced by the exact
    reference on CPUs without VNNI (``record_property`` notes how many)."""
    path, kind, float_path, feeds, values, replaced = _checked_in(name)
    record_property("nodes on the exact reference", len(replaced))
    check_end_to_end(path, feeds, kind, float_path, values)
    assert replay_integer_nodes(path, values) > 0


@pytest.mark.parametrize("name", sorted(CHECKED_IN))
def test_checked_in_int8_jitted_intermediates(name, record_property):
    """The integer nodes inside the jitted model (``check_jitted_intermediates``): the
    end-to-end bounds tolerate a stray step where float ops sit between quantizers, this does
    not. Costs one more compile per model (every value an output)."""
    path, _, _, feeds, values, _ = _checked_in(name)
    checked, skipped = check_jitted_intermediates(path, feeds, values)
    record_property("jitted integer nodes checked, skipped", (checked, skipped))
    assert checked > 0, f"{name}: no integer node of the jitted model had the reference's inputs"


@pytest.mark.parametrize("name", sorted(CHECKED_IN))
def test_reference_values_equal_onnxruntime(name):
    """``reference_values`` with no node replaced is onnxruntime's whole-graph run, bit for
    bit: running the nodes one by one changes nothing (each is its own kernel either way)."""
    path = os.path.join(MODELS, f"{name}.onnx")
    proto = onnx.load(path)
    feeds = CHECKED_IN[name][2]()
    values, replaced = reference_values(proto, feeds, replace=False)
    assert not replaced
    whole = reference_session(proto).run(None, feeds)
    for o, want in zip(proto.graph.output, whole, strict=True):
        np.testing.assert_array_equal(values[o.name], want, err_msg=f"{name} output {o.name!r}")


# -- the zoo ---------------------------------------------------------------------------------------


def _need_exporters():
    for mod in ("torch", "transformers", "onnxscript"):
        pytest.importorskip(mod, reason=f"building the zoo needs {mod} (not in the test extras)")


@pytest.fixture(scope="session")
def small_zoo(tmp_path_factory):
    """The --small zoo, built once per test run (shared by xdist workers through a lock)."""
    _need_exporters()
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp().parent  # shared by all workers of this run
    with FileLock(str(root / "zoo.lock")):
        built = zoo.build(small=True, cache_dir=str(root / "zoo"), verbose=False)
    return {m.name: m for m in built}


def _check_zoo_model(m) -> None:
    assert os.path.isfile(m.path), f"{m.name} was not built: see build_log.json in its folder"
    float_path = os.path.join(os.path.dirname(m.path), f"{m.base}.onnx")
    for k, dims in enumerate(m.test_dims):
        feeds = m.make_inputs(seed=7, **dims)
        values = None
        if m.kind != "float":
            values, _ = reference_values(onnx.load(m.path), feeds)
        check_end_to_end(m.path, feeds, m.kind, float_path, values)
        if m.kind != "float" and k == 0:
            assert replay_integer_nodes(m.path, values) > 0


SMALL = [m.name for m in zoo.models(small=True)]


@pytest.mark.parametrize("name", SMALL)
def test_small_zoo(small_zoo, name):
    if name not in small_zoo:
        pytest.fail(f"{name} failed to build (see build_log.json)")
    _check_zoo_model(small_zoo[name])


FULL = [m.name for m in zoo.models(small=False)]


@pytest.mark.slow
@pytest.mark.parametrize("name", FULL)
def test_full_zoo(name):
    (m,) = [m for m in zoo.models([name], small=False) if m.name == name]
    if not os.path.isfile(m.path):
        _need_exporters()
        zoo.build([name], small=False, verbose=False)
    _check_zoo_model(m)


def test_zoo_specs_make_inputs():
    """The zoo's specs work without torch: names, kinds and seeded inputs at chosen sizes."""
    specs = zoo.models(small=True)
    assert {m.kind for m in specs} == set(zoo.KINDS)
    for m in specs:
        feeds = m.make_inputs(batch=3, sequence=5, past=4, seed=1)
        assert list(feeds) == [s.name for s in m.inputs]
        again = m.make_inputs(batch=3, sequence=5, past=4, seed=1)
        for k in feeds:
            np.testing.assert_array_equal(feeds[k], again[k])
            assert feeds[k].shape[0] == 3
        assert all(d != m.export_dims for d in m.test_dims)
