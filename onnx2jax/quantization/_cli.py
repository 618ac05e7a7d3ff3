"""`onnx2jax quantize MODEL -o OUT`: the command line of onnx2jax.quantize."""

from __future__ import annotations

import argparse
import os

import numpy as np

from .. import InputError
from ._calibrate import random_samples
from ._quantize import quantize


def _sample(path: str, names: list[str]) -> dict[str, np.ndarray]:
    """One calibration input dict: a .npz of named arrays, or a .npy for a one-input model."""
    if not os.path.isfile(path):
        raise InputError(f"--calibrate {path}: no such file")
    if path.endswith(".npz"):
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    if len(names) != 1:
        raise InputError(
            f"--calibrate {path}: the model has inputs {names}; give .npz files keyed by name"
        )
    return {names[0]: np.load(path)}


def cmd_quantize(args: argparse.Namespace) -> int:
    import onnx2jax

    names = [s.name for s in onnx2jax.load(args.model, passes=None).inputs]
    if args.calibrate:
        calibration = [_sample(p, names) for p in args.calibrate]
    elif args.random:
        calibration = random_samples(onnx2jax.load(args.model, passes=None).inputs, args.random)
    else:
        calibration = None
    q = quantize(
        args.model,
        calibration,
        mode=args.mode,
        method=args.method,
        per_channel=not args.per_tensor,
        weight_type=args.weight_type,
        exclude=args.exclude,
        int4_format=args.int4_format,
    )
    with open(args.output, "wb") as f:
        f.write(q.SerializeToString())
    before, after = os.path.getsize(args.model), os.path.getsize(args.output)
    print(
        f"{args.output}: {after:,} bytes ({100 * (1 - after / before):.0f}% smaller than {before:,})"
    )
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("quantize", help="post-training quantization into a QDQ ONNX file")
    p.add_argument("model")
    p.add_argument("-o", "--output", required=True, metavar="OUT.onnx")
    data = p.add_mutually_exclusive_group()
    data.add_argument("--calibrate", nargs="+", metavar="FILE",
                      help="calibration samples: .npz (inputs by name) or .npy (one input)")  # fmt: skip
    data.add_argument("--random", type=int, metavar="N", help="N random samples (N(0, 1))")
    p.add_argument("--mode", choices=["static", "dynamic"], default="static")
    p.add_argument("--method", choices=["minmax", "percentile", "entropy"], default="minmax")
    p.add_argument("--weight-type", choices=["int8", "int4"], default="int8")
    p.add_argument("--int4-format", choices=["matmulnbits", "qdq"], default="matmulnbits",
                   help="int4 MatMul weights as com.microsoft MatMulNBits (packed) or "
                        "DequantizeLinear block_size")  # fmt: skip
    p.add_argument("--per-tensor", action="store_true", help="one scale per weight tensor")
    p.add_argument("--exclude", action="append", default=[], metavar="NODE", help="keep in float")
    p.set_defaults(func=cmd_quantize)
