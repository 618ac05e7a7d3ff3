"""Graph passes over onnx-ir (installed as onnx2jax.passes). Empty so far: no pass ships yet."""
