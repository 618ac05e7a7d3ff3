"""The one exception hierarchy of onnx2jax: every error names what failed and what to do."""

from __future__ import annotations


class Onnx2JaxError(Exception):
    """Base class of every error onnx2jax raises on purpose."""


class ModelLoadError(Onnx2JaxError):
    """The model file or graph is unreadable or malformed (truncated file, cycle, dangling input)."""


class ExternalDataError(ModelLoadError):
    """A tensor's external data file is missing, unreadable or outside the model's folder."""


class UnsupportedOpsError(Onnx2JaxError):
    """The model uses operators onnx2jax does not implement; lists all of them at once."""

    def __init__(self, missing: list[str]):
        self.missing = list(missing)
        lines = "\n".join(f"  - {m}" for m in self.missing)
        super().__init__(
            f"{len(self.missing)} unsupported operator use(s) in this model:\n{lines}\n"
            "Run `onnx2jax info MODEL` for the full op histogram; please file an issue "
            "naming these ops."
        )


class InputError(Onnx2JaxError):
    """Inputs given at call time do not match the model's signature."""


class StaticValueError(Onnx2JaxError):
    """An op input that must be known at trace time (a shape, axes, k, ...) depends on runtime data."""


class NodeError(Onnx2JaxError):
    """An op failed while tracing or running a node; the message names the node."""
