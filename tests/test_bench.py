"""`onnx2jax bench` on the example CNN: the JSON record has every field (no timing assertions)."""

from __future__ import annotations

import json
import os

import pytest

from onnx2jax import _bench
from onnx2jax.cli import main

EXAMPLE = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "tiny_cnn.onnx"
)


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
            "onnxruntime",
            "--runs",
            "4",
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
    m = record["machine"]
    assert m["cpu"] and m["versions"]["jax"] and m["versions"]["onnxruntime"] and m["date"]
    assert [b["batch"] for b in record["batches"]] == [1, 2]
    for b in record["batches"]:
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


def test_report_prints(record):
    text = _bench.format_record(record)
    assert "onnx2jax/onnxruntime: latency" in text and "batch 2" in text


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
    assert "fixes axis 0 to 1" in _bench.make_inputs(str(path), 8, {})
    assert _bench.make_inputs(str(path), 1, {})["x"].shape == (1, 4)


def test_bad_arguments(capsys):
    assert main(["bench", EXAMPLE, "--batch", "x"]) == 2
    assert "--batch takes sizes" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: usage and exit status 2
        main(["bench", EXAMPLE, "--compare", "nope", "--no-peak"])
    assert "unknown engine(s) nope" in capsys.readouterr().err
