"""onnx2jax: import ONNX models as pure JAX functions that XLA compiles as one program."""

from __future__ import annotations

import importlib.util as _importlib_util

from ._errors import ExternalDataError as ExternalDataError
from ._errors import InputError as InputError
from ._errors import ModelLoadError as ModelLoadError
from ._errors import NodeError as NodeError
from ._errors import Onnx2JaxError as Onnx2JaxError
from ._errors import StaticValueError as StaticValueError
from ._errors import UnsupportedOpsError as UnsupportedOpsError
from .export import convert as convert  # needs onnx only when called
from .export import load_exported as load_exported  # jax only: runs where onnx is not installed

# Without onnx (a runtime-only install) only load_exported is here: it runs jax.export artifacts.
if _importlib_util.find_spec("onnx") is not None:
    from ._api import Model as Model
    from ._api import load as load
    from ._compiler import compiler_options as compiler_options
    from ._ir import TensorSpec as TensorSpec
    from .generate import Generator as Generator  # after the names it imports from here
    from .quantization import quantize as quantize  # after the names it imports
    from .shard import shard as shard  # after the names it uses

__version__ = "0.1.0"

__all__ = [
    "ExternalDataError",
    "Generator",
    "InputError",
    "Model",
    "ModelLoadError",
    "NodeError",
    "Onnx2JaxError",
    "StaticValueError",
    "TensorSpec",
    "UnsupportedOpsError",
    "compiler_options",
    "convert",
    "load",
    "load_exported",
    "quantize",
    "shard",
]
