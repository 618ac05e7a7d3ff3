"""Find the first node whose output differs between onnx2jax and onnxruntime (run by hand).

    python tests/models/compare_intermediates.py tests/models/bert_dynamo.onnx [--top 10]

Makes every node output a graph output, runs both with the same seeded inputs as
``tests/test_real_models.py`` (main case) and prints, in graph order, the nodes whose outputs
disagree beyond rtol 1e-4 / atol 1e-5, with max abs/rel differences. The first listed node is
the likely culprit; later ones usually inherit its error.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import onnx
import onnx.helper as oh
import onnxruntime as ort

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from test_real_models import ATOL, FAMILIES, RTOL  # noqa: E402

import onnx2jax  # noqa: E402


def with_all_outputs(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    model = onnx.shape_inference.infer_shapes(model)
    types = {vi.name: vi.type for vi in model.graph.value_info}
    existing = {o.name for o in model.graph.output}
    names = []
    for node in model.graph.node:
        for o in node.output:
            if o and o not in existing and o in types:
                model.graph.output.append(oh.make_value_info(o, types[o]))
                names.append(o)
    return model, names


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("path")
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--case", type=int, default=0)
    args = ap.parse_args()
    name = os.path.basename(args.path).removesuffix(".onnx")
    feeds = FAMILIES[name.split("_")[0]][args.case]()
    model, _ = with_all_outputs(onnx.load(args.path))
    producer = {o: n for n in model.graph.node for o in n.output}
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    out_names = [o.name for o in sess.get_outputs()]
    expected = dict(zip(out_names, sess.run(None, feeds), strict=True))
    m = onnx2jax.load(model)
    got = m.outputs_dict(m(**feeds))
    shown = 0
    for node in model.graph.node:
        for o in node.output:
            if o not in expected or o not in got:
                continue
            e, g = np.asarray(expected[o]), np.asarray(got[o])
            bad = ""
            if e.shape != g.shape:
                bad = f"shape {g.shape} != {e.shape}"
            elif e.dtype.kind in "fc":
                e64, g64 = e.astype(np.float64), g.astype(np.float64)
                if not np.allclose(g64, e64, rtol=RTOL, atol=ATOL, equal_nan=True):
                    d = np.abs(g64 - e64)
                    d = np.where(np.isnan(d), np.inf, d)
                    rel = d / np.maximum(np.abs(e64), 1e-30)
                    i = np.unravel_index(np.argmax(d), d.shape)
                    bad = (
                        f"max abs {d.max():.3g} rel {rel.max():.3g} at {i}: "
                        f"got {g64[i]!r} want {e64[i]!r}"
                    )
            elif not np.array_equal(
                g.astype(np.int64) if g.dtype.kind in "iub" else g,
                e.astype(np.int64) if e.dtype.kind in "iub" else e,
            ):
                bad = f"values differ: got {g.ravel()[:8]} want {e.ravel()[:8]}"
            if bad:
                n = producer[o]
                print(f"{n.op_type:20s} {n.name!r} -> {o!r}: {bad}")
                shown += 1
                if shown >= args.top:
                    return
    if not shown:
        print("all intermediates match")


if __name__ == "__main__":
    main()
