"""`onnx2jax bench` on the example CNN: the JSON record has every field (no timing assertions);
the busy-machine rule, the wait for a quiet machine, and RESULTS.md's busy marks on made-up
records."""

from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import pytest

import onnx2jax
from onnx2jax import bench
from onnx2jax.bench import record as bench_record
from onnx2jax.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "examples", "tiny_cnn.onnx")
# OpenVINO is in the [bench] extra, not [test]: compared where it is installed.
HAVE_OPENVINO = importlib.util.find_spec("openvino") is not None


@pytest.fixture(scope="module")
def record(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "out.json"
    rc = main(
        [
            "bench",
            EXAMPLE,
            "--batch",
            "1,2",
            "--compare",
            "onnxruntime,openvino" if HAVE_OPENVINO else "onnxruntime",
            "--runs",
            "4",
            "--quiet-wait",
            "0",  # record the load, do not wait for a quiet machine
            "--no-peak",
            "--json",
            str(out),
        ]
    )
    with open(out) as f:
        rec = json.load(f)
    errors = [r.get("error") for b in rec["batches"] for r in b["engines"].values() if not r["ok"]]
    assert rc == 0 and not errors, errors
    return rec


def test_record_fields(record):
    assert record["model"] == "tiny_cnn" and record["threads"] >= 1
    assert record["schema"] == bench.SCHEMA
    m = record["machine"]
    assert m["cpu"] and m["versions"]["jax"] and m["versions"]["onnxruntime"] and m["date"]
    assert isinstance(m["cpu_flags"], list)
    assert record["options"]["max_load"] == pytest.approx(bench.default_max_load())
    assert [b["batch"] for b in record["batches"]] == [1, 2]
    for b in record["batches"]:
        load = b["load"]
        assert load["waited_s"] < 5 and load["max_load"] == record["options"]["max_load"]
        assert load["quiet"] == bench.verdict(load) and load["timed_s"] > 0
        if os.path.exists("/proc/loadavg"):
            assert load["load_1m_before"] >= 0 and load["others_cores"] >= 0
        assert b["inputs"] == {"image": ["float32", [b["batch"], 3, 32, 32]]}
        # Two 3x3 convs (3->16 at 32x32, 16->32 at 16x16) and a 32->10 linear layer.
        per_item = 2 * (16 * 32 * 32 * 3 * 9 + 32 * 16 * 16 * 16 * 9 + 10 * 32)
        assert b["flops"] == b["flops_traced"] == per_item * b["batch"]
        assert b["flops_source"] == "traced" and b["flops_onnx"] == b["flops"]
        assert b["flops_xla"] > 0
        for engine in ("onnx2jax", "onnxruntime"):
            r = b["engines"][engine]
            assert r["ok"], r
            assert r["runs"] == 4 and r["threads"] == record["threads"]
            for key in (
                "median_ms",
                "p90_ms",
                "items_per_s",
                "gflops",
                "peak_rss_mb",
                "import_rss_mb",
                "compile_cold_s",
            ):
                assert r[key] > 0, key
            assert r["p90_ms"] >= r["median_ms"] >= r["min_ms"]
            assert r["rounds"] >= 3  # interleaved: the order flips at least twice
        j = b["engines"]["onnx2jax"]
        for phase in ("cold", "warm"):
            for key in ("load_s", "trace_s", "compile_s", "first_run_s", "total_s"):
                assert j[phase][key] >= 0, (phase, key)
        # The cold process filled the cache folder; the warm one found it filled.
        assert j["cold"]["cache_entries_before"] == 0 < j["cold"]["cache_entries_after"]
        assert j["warm"]["cache_entries_before"] == j["cold"]["cache_entries_after"]
        assert j["compile_warm_s"] > 0 and j["peak_rss_cold_mb"] > 0
        assert j["vs_onnxruntime"]["max_abs_diff"] < 1e-4
        q = b["ratios"]["onnx2jax/onnxruntime"]
        assert q["median"] == pytest.approx(
            j["median_ms"] / b["engines"]["onnxruntime"]["median_ms"]
        )
        for key in ("p90", "throughput", "compile_cold", "compile_warm", "peak_rss"):
            assert q[key] > 0, key
        if HAVE_OPENVINO:
            ov = b["engines"]["openvino"]
            assert ov["ok"] and ov["runs"] == 4 and ov["peak_rss_mb"] > 0, ov
            assert ov["cold"]["openvino_shapes"] == "concrete"
            assert ov["cold"]["openvino_config"]["INFERENCE_NUM_THREADS"] == str(record["threads"])
            assert ov["vs_onnxruntime"]["max_abs_diff"] < 1e-4
            assert b["ratios"]["onnx2jax/openvino"]["median"] > 0


def test_report_prints(record):
    text = bench.format_record(record)
    assert "onnx2jax/onnxruntime: latency" in text and "batch 2" in text
    assert "1-min load average" in text


def test_fixed_batch_axis_is_skipped(tmp_path):
    import onnx
    import onnx.helper as oh

    g = oh.make_graph(
        [oh.make_node("Relu", ["x"], ["y"])],
        "g",
        [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])],
    )
    path = tmp_path / "fixed.onnx"
    onnx.save(oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)]), path)
    assert "fixes axis 0 to 1" in bench.make_inputs(str(path), 8, {})
    assert bench.make_inputs(str(path), 1, {})["x"].shape == (1, 4)


def test_bad_arguments(capsys):
    assert main(["bench", EXAMPLE, "--batch", "x"]) == 2
    assert "--batch takes sizes" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: usage and exit status 2
        main(["bench", EXAMPLE, "--compare", "nope", "--no-peak"])
    assert "unknown engine(s) nope" in capsys.readouterr().err


def test_verdict():
    quiet = {"max_load": 0.5, "quiet_before": True, "timed_s": 3.0, "others_cores": 0.1}
    assert bench.verdict(quiet)
    assert not bench.verdict({**quiet, "quiet_before": False})  # the load never fell
    assert not bench.verdict({**quiet, "others_cores": 0.6})  # others took the cores meanwhile
    assert not bench.verdict({**quiet, "steal_cores": 0.45})  # ... or the hypervisor did
    # A window under a second is too coarse for 10 ms CPU accounting: the wait decides alone.
    assert bench.verdict({**quiet, "others_cores": 0.9, "timed_s": 0.2})


def test_wait_for_quiet(monkeypatch):
    loads = iter([2.0, 1.2, 0.4, 0.3])
    monkeypatch.setattr(bench_record, "load_average", lambda: [next(loads), 0.0, 0.0])
    monkeypatch.setattr(bench_record.time, "sleep", lambda s: None)
    got = bench_record.wait_for_quiet(0.5, 60.0, log=lambda s: None)
    assert got["quiet_before"] and got["load_1m_start"] == 2.0
    assert got["load_1m_end_of_wait"] == 0.4
    monkeypatch.setattr(bench_record, "load_average", lambda: [3.0, 0.0, 0.0])
    got = bench_record.wait_for_quiet(0.5, 0.0, log=lambda s: None)  # no wait: only record
    assert not got["quiet_before"] and got["load_1m_end_of_wait"] == 3.0


def _run_py():
    spec = importlib.util.spec_from_file_location(
        "bench_run", os.path.join(ROOT, "benchmarks", "run.py")
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_results_md_marks_busy_rows(tmp_path):
    def rec(model, ort_ms, ov_ms, quiet, load):
        engines = {
            "onnx2jax": {"ok": True, "median_ms": 10.0, "runs": 5},
            "onnxruntime": {"ok": True, "median_ms": ort_ms, "runs": 5},
            "openvino": {"ok": True, "median_ms": ov_ms, "runs": 5},
        }
        ratios = {
            f"onnx2jax/{e}": {"median": 10.0 / ms}
            for e, ms in (("onnxruntime", ort_ms), ("openvino", ov_ms))
        }
        b = {
            "batch": 1,
            "engines": engines,
            "ratios": ratios,
            "load": {"quiet": quiet, "load_1m_before": load, "max_load": 0.5},
        }
        return {"model": model, "machine": {"cpu_flags": ["avx2"]}, "batches": [b]}

    for r in (
        rec("a", 5.0, 4.0, True, 0.2),
        rec("b", 20.0, 10.0, True, 0.3),
        rec("c", 40.0, 40.0, False, 3.1),
    ):
        (tmp_path / f"{r['model']}.json").write_text(json.dumps(r))
    info = {"models": ["a", "b", "c"], "options": {"quiet_wait": 120.0, "max_load": 0.5}}
    (tmp_path / "run.json").write_text(json.dumps(info))
    md = _run_py().render(str(tmp_path), str(tmp_path))
    assert (tmp_path / "RESULTS.md").read_text() == md
    summary = next(line for line in md.splitlines() if line.startswith("**Summary**"))
    # Quiet rows only: ratios 2 and 0.5 to onnxruntime, 2.5 and 1 to OpenVINO.
    assert "**1.00x** onnxruntime (2 models)" in summary
    assert f"**{(2.5 * 1.0) ** 0.5:.2f}x** OpenVINO (2 models)" in summary
    assert "c b1 (3.10)" in md and "| c | 1 | 3.10 \u2020 |" in md and "| a | 1 | 0.20 |" in md
    assert "**vs OpenVINO**" in md and "no AVX-512" in md


def test_traced_flops_count_the_passes_matmul():
    """The matmul_weights pass's MatMulTransB counts as the MatMul it replaced."""
    import onnx.helper as oh
    from onnx import TensorProto, numpy_helper

    from onnx2jax.bench.flops import traced_flops

    w = numpy_helper.from_array(np.ones((6, 5), np.float32), "w")
    graph = oh.make_graph(
        [oh.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [oh.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4, 6])],
        [oh.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [w],
    )
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    x = np.ones((3, 4, 6), np.float32)
    for passes in ("default", None):
        m = onnx2jax.load(model, passes=passes)
        assert traced_flops(m, {"x": x}, {})["flops"] == 2 * 3 * 4 * 5 * 6
