"""Dynamic batcher and KServe v2 HTTP server (installed as onnx2jax.serve). Empty so far: not built yet."""
