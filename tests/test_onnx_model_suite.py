"""The ONNX model test data (whole models, not single nodes) through ``onnx2jax.backend``.

onnx ships model cases besides its node cases: ``simple`` (small hand-built graphs),
``pytorch-converted`` and ``pytorch-operator`` (models exported by old PyTorch versions, many at
opsets 1-9 with their old attribute forms), and ``real`` (ImageNet classifiers). One test per case,
named like the case; each runs exactly like a node case (``test_onnx_node_suite.run_case``:
``backend.prepare`` with ``x64=True``, then ``BackendRep.run`` through the whole-graph
``jax.jit``) and is compared by the node suite's ``assert_outputs_match``.

Where the data comes from, as ``onnx.backend.test.runner`` reads it:

- a case with a ``model_dir``: ``model.onnx`` and ``test_data_set_*/{input,output}_*.pb``;
- a ``real`` case whose url points into onnx's own ``data/light/`` folder: the light model
  (weights are ConstantOfShape fills) fed the runner's deterministic dummy inputs, against the
  ``light_<model>_output_<i>.pb`` stored beside it;
- anything else needs a download (the ``real`` models' original urls), which this suite never
  does: such a case is skipped as not available, and so is a kind whose data folder is missing.
  ``light`` itself has no cases: its folder holds the files the ``real`` cases use.

The ``real`` cases are marked ``slow`` (deselected by default, run them with ``-m slow``): nine
ImageNet convnets at 224x224 cost about 75 s of CPU to compile and run without a warm
compilation cache, against about 15 s for the other 140 cases.

Known failures are listed, with reasons grouped by cause, in ``tests/model_expectations.py``
and marked ``xfail(strict=True)``. Draft that list with
``python tests/tools/update_expectations.py --suite model``. The pass count is printed at the end
of the run (``tests/conftest.py``).
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import os
import sys
import warnings
from typing import Any

import onnx
import pytest

sys.path.insert(0, os.path.dirname(__file__))

from failure_cause import check_listed_failure  # noqa: E402
from model_expectations import EXPECTED_FAILURES  # noqa: E402
from test_onnx_node_suite import run_case  # noqa: E402

KINDS = ("simple", "pytorch-converted", "pytorch-operator", "light", "real")
_LIGHT_URL = "onnx/backend/test/data/light/"

# Old exported models feed shape-deciding values as graph inputs; the load-time warning about
# value specialisation is expected here, as in the node suite.
pytestmark = pytest.mark.filterwarnings("ignore:input .* decides output shapes:UserWarning")


@dataclasses.dataclass(frozen=True)
class Unavailable:
    """A case (or a whole kind, ``name`` empty) whose data is not on this machine."""

    kind: str
    name: str
    reason: str


def _onnx_root() -> str:
    """The folder that holds the ``onnx`` package (ONNX urls like ``onnx/backend/...`` are
    relative to it)."""
    return os.path.dirname(os.path.dirname(os.path.abspath(onnx.__file__)))


def _local_path(case: Any) -> str | None:
    """The local model file of a url-only case, or None when it needs a download."""
    if case.url and case.url.startswith(_LIGHT_URL):
        path = os.path.join(_onnx_root(), case.url)
        if os.path.exists(path):
            return path
    return None


@functools.lru_cache(maxsize=1)
def load_cases() -> tuple[tuple[Any, ...], tuple[Unavailable, ...]]:
    """The model cases onnx ships that can run here, sorted by name, and those that cannot.

    Only lists folders (fast); models and data are read when a case runs (:func:`materialize`).
    """
    from onnx.backend.test.loader import load_model_tests

    cases, unavailable = [], []
    for kind in KINDS:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                found = load_model_tests(kind=kind)
        except (ValueError, OSError) as e:  # no data folder for this kind
            unavailable.append(Unavailable(kind, "", f"no local data ({e})"))
            continue
        if not found and kind != "light":  # light's folder holds files, the 'real' cases' data
            unavailable.append(Unavailable(kind, "", "no cases in its data folder"))
        for case in found:
            if case.model_dir is not None or _local_path(case) is not None:
                cases.append(case)
            else:
                unavailable.append(
                    Unavailable(kind, case.name, f"needs a download ({case.url}); not local")
                )
    return tuple(sorted(cases, key=lambda c: c.name)), tuple(unavailable)


def _read(path: str, type_proto: onnx.TypeProto) -> Any:
    """One stored input/output, decoded by the graph type it belongs to (as onnx's runner does)."""
    with open(path, "rb") as f:
        data = f.read()
    which = type_proto.WhichOneof("value")
    if which == "sequence_type":
        proto = onnx.SequenceProto()
        proto.ParseFromString(data)
        return onnx.numpy_helper.to_list(proto)
    if which == "optional_type":
        proto = onnx.OptionalProto()
        proto.ParseFromString(data)
        return onnx.numpy_helper.to_optional(proto)
    proto = onnx.TensorProto()
    proto.ParseFromString(data)
    return onnx.numpy_helper.to_array(proto)


def materialize(case: Any) -> Any:
    """The case with ``model`` and ``data_sets`` read from disk, ready for ``run_case``."""
    from onnx.backend.test.runner import Runner

    if case.model_dir is not None:
        model = onnx.load(os.path.join(case.model_dir, "model.onnx"))
        data_sets = []
        for folder in sorted(glob.glob(os.path.join(case.model_dir, "test_data_set*"))):
            n_in = len(glob.glob(os.path.join(folder, "input_*.pb")))
            n_out = len(glob.glob(os.path.join(folder, "output_*.pb")))
            graph = model.graph
            inputs = [
                _read(os.path.join(folder, f"input_{i}.pb"), graph.input[i].type)
                for i in range(n_in)
            ]
            outputs = [
                _read(os.path.join(folder, f"output_{i}.pb"), graph.output[i].type)
                for i in range(n_out)
            ]
            data_sets.append((inputs, outputs))
    else:
        path = _local_path(case)
        assert path is not None, f"{case.name}: no local model"
        model = onnx.load(path)
        inits = {t.name for t in model.graph.initializer}
        inputs = [
            Runner.generate_dummy_data(x, seed=0, name=case.model_name, random=False)
            for x in model.graph.input
            if x.name not in inits
        ]
        prefix = os.path.splitext(path)[0]
        outputs = [
            _read(f"{prefix}_output_{i}.pb", out.type) for i, out in enumerate(model.graph.output)
        ]
        data_sets = [(inputs, outputs)]
    return dataclasses.replace(case, model=model, data_sets=data_sets)


# Single cases that cost over 5 s of CPU cold (a dilated 3-D window's many small compiles).
_SLOW_CASES = frozenset({"test_MaxPool2d_stride_padding_dilation"})


def _params() -> list[Any]:
    cases, unavailable = load_cases()
    params = []
    for case in cases:
        reason = EXPECTED_FAILURES.get(case.name)
        marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
        if case.kind == "real" or case.name in _SLOW_CASES:
            marks.append(pytest.mark.slow)  # ImageNet-sized convnets: ~75 s of CPU when cold
        params.append(pytest.param(case, id=case.name, marks=marks))
    for u in unavailable:
        name = u.name or f"{u.kind}-not-available"
        skip = pytest.mark.skip(reason=f"onnx model data ({u.kind}) not available: {u.reason}")
        params.append(pytest.param(None, id=name, marks=[skip]))
    return params


@pytest.mark.parametrize("case", _params())
def test_model(case: Any, request: pytest.FixtureRequest) -> None:
    reason = EXPECTED_FAILURES.get(case.name)
    failure = None
    try:
        case = materialize(case)
        jitted = run_case(case)
    except Exception as e:
        if reason is None:
            raise
        # A listed case must still fail for its stated cause, not for a new one.
        failure = f"{check_listed_failure(case.model, e, reason)} ({type(e).__name__})"
    if failure is not None:
        pytest.xfail(failure)  # as in the node suite: no traceback formatting for listed cases
    if not jitted:
        # Passed, but not through the jit (string outputs); tests/conftest.py counts these apart.
        request.node.user_properties.append(("onnx2jax_path", "eager"))


def test_expectations_name_real_cases() -> None:
    """Every entry of model_expectations.py names a model case onnx ships (no stale names)."""
    cases, unavailable = load_cases()
    names = {c.name for c in cases} | {u.name for u in unavailable}
    stale = sorted(set(EXPECTED_FAILURES) - names)
    assert not stale, f"model_expectations.py lists cases onnx does not ship: {stale[:20]}"
