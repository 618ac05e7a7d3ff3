"""onnx2jax.shard on 8 CPU devices: a BERT-like and a GPT-2-like graph, tensor- and data-parallel.

The checks run in a subprocess, because the device count is fixed when JAX starts (conftest asks
for 4): ``XLA_FLAGS=--xla_force_host_platform_device_count=8``.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

# Megatron-style: column-split Q/K/V and the MLP's first layer, row-split the projections back.
RULES = {
    r"(query|key|value|fc_in)\.weight$": (None, "model"),
    r"(query|key|value|fc_in)\.bias$": ("model",),
    r"(attention\.output|attn\.output|fc_out)\.weight$": ("model", None),
}


def _child() -> None:
    """Runs with 8 devices: sharded outputs equal unsharded ones, and params really split."""
    import jax
    import jax_models
    import onnxruntime as ort

    import onnx2jax
    from onnx2jax.shard import shard

    assert jax.device_count() == 8, jax.devices()
    mesh = jax.make_mesh((2, 4), ("data", "model"))
    for build in (jax_models.bert, jax_models.gpt2):
        proto = build(layers=1)
        model = onnx2jax.load(proto)
        sharded = shard(model, mesh, RULES)
        split = 0
        for name, value in sharded.params.items():
            shard_shape = value.addressable_shards[0].data.shape
            if name.endswith(("query.weight", "fc_in.weight")):
                assert shard_shape == (value.shape[0], value.shape[1] // 4), (name, shard_shape)
            elif name.endswith(("output.weight", "fc_out.weight")):
                assert shard_shape == (value.shape[0] // 4, value.shape[1]), (name, shard_shape)
            elif name.endswith("norm.weight") or name.endswith("ln_1.weight"):
                assert shard_shape == value.shape, (name, shard_shape)  # replicated by default
            split += shard_shape != value.shape
        assert split >= 5, split
        feeds = jax_models.inputs(proto, 4, 6)
        sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        ref = sess.run(None, feeds)[0]
        plain = np.asarray(model(**feeds)[0])
        (out,) = sharded(**feeds)
        assert out.sharding.spec[0] == "data", out.sharding  # the batch stays split
        np.testing.assert_allclose(np.asarray(out), plain, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-4, atol=1e-4)
        # The pure path: jax.jit(apply) on sharded params and inputs runs one partitioned
        # program, with collectives for the row-split layers.
        _, named = sharded.shard_inputs(**feeds)
        compiled = jax.jit(sharded.apply).lower(sharded.params, **named).compile()
        np.testing.assert_allclose(
            np.asarray(compiled(sharded.params, **named)[0]), plain, rtol=1e-5, atol=1e-5
        )
        hlo = compiled.as_text()
        assert "all-reduce" in hlo or "reduce-scatter" in hlo, "no collective: not partitioned?"
        print(f"{build.__name__}: {split} params split, outputs match")


@pytest.mark.parametrize("what", ["bert+gpt2"])
def test_shard_on_8_cpu_devices(what):
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(__file__), env.get("PYTHONPATH", "")])
    # The suite's compilation cache (tests/conftest.py), for warm reruns.
    env.setdefault(
        "JAX_COMPILATION_CACHE_DIR", os.path.join(os.path.dirname(__file__), "..", ".jax_cache")
    )
    env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    proc = subprocess.run(
        [sys.executable, __file__, "child"], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
    assert "bert: " in proc.stdout and "gpt2: " in proc.stdout, proc.stdout


def test_rules_are_checked():
    import jax
    import jax_models

    import onnx2jax
    from onnx2jax.shard import shard

    model = onnx2jax.load(jax_models.gpt2(layers=1))
    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    with pytest.raises(onnx2jax.InputError, match="names mesh axis 'model'"):
        shard(model, mesh, RULES)
    with pytest.raises(onnx2jax.InputError, match="not a valid regex"):
        shard(model, mesh, {"(": ("data",)})
    with pytest.raises(onnx2jax.InputError, match="more axes than the param"):
        shard(model, mesh, {r"ln_f\.bias": (None, "data")})
    # With no rules everything is replicated, and the call still splits the batch.
    sharded = shard(model, mesh)
    assert all(v.sharding.is_fully_replicated for v in sharded.params.values())
    feeds = jax_models.inputs(jax_models.gpt2(layers=1), jax.device_count(), 3)
    np.testing.assert_allclose(
        np.asarray(sharded(**feeds)[0]), np.asarray(model(**feeds)[0]), rtol=1e-5, atol=1e-5
    )


if __name__ == "__main__" and sys.argv[1:] == ["child"]:
    _child()
