"""The measuring harness behind `onnx2jax bench` and ``benchmarks/run.py``: one model in
onnx2jax beside onnxruntime (and peers), each engine in its own process, interleaved, with
compile times, memory, FLOP rates and a record of how busy the machine was.

How it measures (the full account is in ``benchmarks/README.md``):

- Every engine runs in a **worker process** of its own that imports only that engine
  (``workers.py``: the process protocol; ``engines.py``: one adapter per engine), so peak RSS
  (the kernel's high-water mark ``VmHWM``) belongs to that engine alone.
- **Cold compile**: a fresh onnx2jax process with an empty JAX persistent compilation cache
  folder; **warm**: a second fresh process pointed at the same, now filled, folder. Each reports
  load, trace+lower, XLA compile and first-run times. The other engines' counterpart is their
  load + compile + first run, in a fresh process.
- **A quiet machine**: before each batch's timed runs the harness waits (up to
  ``quiet_wait`` s) for the 1-minute load average to fall below ``max_load``, and measures the
  CPU that other processes take during the runs; the batch's ``load`` record says whether it was
  quiet (``record.verdict``).
- **Latency**: after a warm-up, the engines take turns running short blocks of runs (rounds of
  about ``block_seconds``; the order flips every round) so that drift on a shared machine hits
  all of them; median and p90 of the per-run times.
- **Threads**: every engine gets the same cores: the worker's CPU affinity is the first
  ``threads`` allowed cores and each engine's own thread setting is ``threads`` (tract's Python
  bindings run on one thread).
- **FLOPs** (``flops.py``): ``2 x multiply-adds`` of Conv, ConvTranspose, MatMul and Gemm nodes
  at the benchmark's input shapes (engine-independent), beside XLA's own count. GFLOP/s is
  compared with the measured peak: the best time of a 2048^3 float32 matmul in XLA.

Module-level imports in this package are the standard library and numpy only: worker processes
load these files without the ``onnx2jax`` package (see ``workers.py``).
"""

from __future__ import annotations

from .engines import ENGINES as ENGINES
from .flops import COUNTED_OPS as COUNTED_OPS
from .flops import node_flops as node_flops
from .flops import onnx_flops as onnx_flops
from .harness import PEAK_SIZE as PEAK_SIZE
from .harness import BenchOptions as BenchOptions
from .harness import bench_model as bench_model
from .harness import make_inputs as make_inputs
from .harness import measure_peak as measure_peak
from .record import SCHEMA as SCHEMA
from .record import default_max_load as default_max_load
from .record import default_threads as default_threads
from .record import format_load as format_load
from .record import machine_info as machine_info
from .record import verdict as verdict
from .report import format_record as format_record
from .report import main as main
from .workers import WorkerError as WorkerError

__all__ = [
    "COUNTED_OPS",
    "ENGINES",
    "PEAK_SIZE",
    "SCHEMA",
    "BenchOptions",
    "WorkerError",
    "bench_model",
    "default_max_load",
    "default_threads",
    "format_load",
    "format_record",
    "machine_info",
    "main",
    "make_inputs",
    "measure_peak",
    "node_flops",
    "onnx_flops",
    "verdict",
]
