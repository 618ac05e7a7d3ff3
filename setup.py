"""Builds onnx2jax's optional CPU kernels (onnx2jax/_kernels); everything else is in pyproject.toml.

The extension is optional: without a C++ compiler the install still succeeds and onnx2jax runs
every dot and convolution through XLA (``onnx2jax._kernels.available()`` says which).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "onnx2jax._kernels._lib",
            sources=[
                "onnx2jax/_kernels/packed_matmul.cc",
                "onnx2jax/_kernels/packed_conv.cc",
                "onnx2jax/_kernels/depthwise_conv.cc",
                "onnx2jax/_kernels/inverted_residual.cc",
            ],
            include_dirs=["onnx2jax/_kernels/include"],
            language="c++",
            extra_compile_args=["-O3", "-std=c++17", "-fvisibility=hidden", "-w"],
            optional=True,
        )
    ]
)
