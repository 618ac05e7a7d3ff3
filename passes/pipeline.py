"""The pass pipeline: which passes exist, the order they run in, a fixed point, a report."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import onnx_ir as ir
import onnx_ir.passes.common as common

from . import arith, attention, batchnorm, conv, layout, matmul, norm_act, rnn
from ._util import count_nodes


@dataclass(frozen=True)
class PassSpec:
    name: str
    make: Callable[[], ir.passes.PassBase]
    doc: str


def _cleanup() -> ir.passes.PassBase:
    # onnx-ir's own generic passes: drop Identity nodes and dead nodes, merge duplicates.
    return ir.passes.Sequential(
        common.IdentityEliminationPass(),
        common.CommonSubexpressionEliminationPass(),
        common.RemoveUnusedNodesPass(),
    )


# Order matters: BatchNorm folds into the conv before the conv changes layout.
PASSES: dict[str, PassSpec] = {
    spec.name: spec
    for spec in (
        PassSpec("cleanup", _cleanup, "Identity elimination, CSE, dead nodes (onnx-ir)"),
        PassSpec(
            "pow_to_mul",
            arith.PowToMul,
            "Pow by a constant 2, 3 or 4 as multiplies (XLA's general power is slow)",
        ),
        PassSpec(
            "fuse_layernorm",
            norm_act.FuseLayerNorm,
            "Decomposed LayerNorm (torch's Div form, tf2onnx/Keras rsqrt forms) as one op",
        ),
        PassSpec(
            "fuse_gelu",
            norm_act.FuseGelu,
            "GELU written out with Erf or Tanh as one Gelu (com.microsoft below opset 20)",
        ),
        PassSpec(
            "fold_batchnorm",
            batchnorm.FoldBatchNorm,
            "BatchNormalization after Conv/ConvTranspose/Gemm folded into its weights",
        ),
        PassSpec(
            "split_rnn_directions",
            rnn.SplitDirections,
            "Bidirectional RNN/GRU/LSTM as a forward and a reverse node on weights split once",
        ),
        PassSpec(
            "nhwc",
            layout.ChannelsLast,
            "2-D convs and pools run channels-last; transposes sunk and cancelled",
        ),
        PassSpec(
            "pack_convs",
            conv.PackConvs,
            "NhwcConv weights packed once for onnx2jax's CPU kernel; ReLU/Clip folded in",
        ),
        PassSpec(
            "fuse_inverted_residuals",
            conv.FuseInvertedResiduals,
            "1x1 expansion, depthwise and 1x1 projection convs as one banded kernel call",
        ),
        PassSpec(
            "fuse_attention",
            attention.FuseAttention,
            "MatMul, scale, mask, Softmax, MatMul chains as one Attention op",
        ),
        PassSpec(
            "pack_few_rows",
            matmul.PackFewRows,
            "Few-row MatMul/Gemm weights packed once for onnx2jax's CPU kernel",
        ),
        PassSpec(
            "pack_many_rows",
            matmul.PackManyRows,
            "Other MatMul/Gemm weights packed once for the CPU kernel's GEMM (up to 256 rows)",
        ),
        PassSpec(
            "matmul_weights",
            matmul.MatMulTransB,
            "MatMul weights laid out [N, K] once (the layout CPU dots run fastest)",
        ),
    )
}
DEFAULT: tuple[str, ...] = tuple(PASSES)
# Passes whose ops pay only with onnx2jax's CPU kernels: ``load`` drops them where those do not
# run (no compiler at install, another backend, ONNX2JAX_KERNELS=off).
KERNEL_PASSES: tuple[str, ...] = (
    "pack_convs",
    "fuse_inverted_residuals",
    "pack_few_rows",
    "pack_many_rows",
)
MAX_ROUNDS = 8


@dataclass
class PassReport:
    """What one pass did over the whole pipeline run."""

    name: str
    runs: int = 0
    modified: bool = False
    nodes_added: int = 0
    nodes_removed: int = 0
    matches: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def __str__(self) -> str:
        what = ", ".join(f"{k} x{v}" for k, v in sorted(self.matches.items())) or "no change"
        return (
            f"{self.name}: +{self.nodes_added} -{self.nodes_removed} nodes; {what} "
            f"({self.seconds * 1e3:.0f} ms)"
        )


@dataclass
class Report:
    passes: list[PassReport] = field(default_factory=list)
    rounds: int = 0
    nodes_before: int = 0
    nodes_after: int = 0

    @property
    def modified(self) -> bool:
        return any(p.modified for p in self.passes)

    def __str__(self) -> str:
        head = f"{self.nodes_before} -> {self.nodes_after} nodes in {self.rounds} round(s)"
        return "\n".join([head] + [f"  {p}" for p in self.passes])


def resolve(passes: str | Iterable[str] | None) -> tuple[str, ...]:
    """``"default"``/``"all"``/``True`` -> every pass; ``None``/``"none"``/``False`` -> none;
    else the named passes, in pipeline order."""
    if passes is None or passes is False or passes == "none":
        return ()
    if passes is True or passes in ("default", "all"):
        return DEFAULT
    names = [passes] if isinstance(passes, str) else list(passes)
    unknown = [n for n in names if n not in PASSES]
    if unknown:
        raise ValueError(
            f"unknown pass(es) {unknown}; the passes are {list(PASSES)} (or 'all' / 'none')"
        )
    return tuple(n for n in PASSES if n in names)


def _node_ids(graph: ir.Graph) -> set[int]:
    return {id(n) for n in graph.all_nodes()}


def optimize(
    model: ir.Model, passes: Sequence[str] | str | None = DEFAULT, *, infer_shapes: bool = True
) -> Report:
    """Run ``passes`` on ``model`` in place, repeating the pipeline until nothing changes.

    Shapes are inferred first (onnx's shape inference, through onnx-ir), so that passes know
    ranks even where the exporter wrote no ``value_info``; ``infer_shapes=False`` where the
    caller inferred them already (``onnx2jax.load`` does, on its weightless proto).
    """
    names = resolve(passes)
    report = Report([PassReport(n) for n in names], nodes_before=count_nodes(model.graph))
    if not names:
        report.nodes_after = report.nodes_before
        return report
    if infer_shapes:
        model = common.ShapeInferencePass(strict_mode=False).call(model).model
    instances = {n: PASSES[n].make() for n in names}
    for rnd in range(MAX_ROUNDS):
        changed = False
        for rep in report.passes:
            before = _node_ids(model.graph)
            t0 = time.perf_counter()
            result = instances[rep.name](model)
            rep.seconds += time.perf_counter() - t0
            rep.runs += 1
            model = result.model
            after = _node_ids(model.graph)
            rep.nodes_added += len(after - before)
            rep.nodes_removed += len(before - after)
            if result.modified or after != before:
                rep.modified = changed = True
                if not getattr(instances[rep.name], "matches", None) and before - after:
                    rep.matches["nodes removed"] = rep.matches.get("nodes removed", 0) + len(
                        before - after
                    )
                for k, v in getattr(instances[rep.name], "matches", {}).items():
                    rep.matches[k] = rep.matches.get(k, 0) + v
        report.rounds = rnd + 1
        if not changed:
            break
    report.nodes_after = count_nodes(model.graph)
    return report
