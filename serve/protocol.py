"""The Open Inference Protocol (KServe v2) on the wire: JSON tensors and Triton's binary
tensor data extension, decoded to numpy and encoded back. No HTTP framework here."""

from __future__ import annotations

import json
import math
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

import ml_dtypes
import numpy as np

from onnx2jax import InputError

# The protocol's datatype names <-> numpy. BYTES (strings) travels as numpy object arrays of
# str, what onnx2jax takes and gives for ONNX string tensors; it is handled apart (_bytes_*).
DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BF16": np.dtype(ml_dtypes.bfloat16),
}
_NAMES = {v: k for k, v in DATATYPES.items()}


def datatype(dtype: Any) -> str:
    """The protocol's name of a numpy dtype (``"BYTES"`` for strings and unknown types)."""
    return _NAMES.get(np.dtype(dtype), "BYTES") if dtype is not None else "BYTES"


class BodyTooLarge(InputError):
    """The request body is larger than the server's limit (HTTP 413)."""


@dataclass
class InferRequest:
    """One decoded ``POST .../infer`` body."""

    inputs: dict[str, np.ndarray]
    outputs: list[tuple[str, bool]] | None  # requested (name, binary); None: all
    id: str | None = None
    timeout_ms: float | None = None
    binary_default: bool = False
    parameters: dict[str, Any] = field(default_factory=dict)


def decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """Undo ``Content-Encoding: gzip|deflate`` (tritonclient's request compression), refusing
    to inflate past ``limit`` bytes."""
    if not encoding or encoding == "identity":
        return body
    if encoding not in ("gzip", "deflate"):
        raise InputError(f"Content-Encoding {encoding!r} is not supported; use gzip or deflate")
    d = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
    try:
        out = d.decompress(body, limit + 1)
    except zlib.error as e:
        raise InputError(f"the {encoding} request body does not decompress: {e}") from None
    if len(out) > limit:
        raise BodyTooLarge(f"the request body inflates past the limit of {limit} bytes")
    return out


def parse_infer(body: bytes, header_length: str | None) -> InferRequest:
    """Decode an inference request: JSON alone, or a JSON header of ``header_length`` bytes
    (the ``Inference-Header-Content-Length`` header) followed by the inputs' binary data."""
    if header_length is not None:
        try:
            n = int(header_length)
        except ValueError:
            n = -1
        if not 0 <= n <= len(body):
            raise InputError(
                f"Inference-Header-Content-Length is {header_length!r}, but the body has "
                f"{len(body)} bytes; it must give the JSON header's length in bytes"
            )
        head, rest = body[:n], memoryview(body)[n:]
    else:
        head, rest = body, memoryview(b"")
    try:
        doc = json.loads(head)
    except (ValueError, UnicodeDecodeError) as e:
        raise InputError(f"the request is not valid JSON: {e}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list):
        raise InputError('the request must be a JSON object with an "inputs" list')
    params = doc.get("parameters") or {}
    if not isinstance(params, dict):
        raise InputError('"parameters" must be a JSON object')
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for i, t in enumerate(doc["inputs"]):
        name, arr, used = _tensor(t, i, rest[offset:])
        if name in inputs:
            raise InputError(f"input {name!r} is given twice")
        inputs[name] = arr
        offset += used
    if offset != len(rest):
        raise InputError(
            f"the body has {len(rest) - offset} bytes of binary data that no input's "
            "binary_data_size accounts for"
        )
    outputs = None
    if doc.get("outputs") is not None:
        if not isinstance(doc["outputs"], list):
            raise InputError('"outputs" must be a list of {"name": ...} objects')
        outputs = []
        for o in doc["outputs"]:
            if not isinstance(o, dict) or not isinstance(o.get("name"), str):
                raise InputError(f'each requested output needs a "name": got {o!r}')
            p = o.get("parameters") or {}
            outputs.append((o["name"], bool(p.get("binary_data", False))))
    timeout = params.get("timeout")  # Triton: microseconds
    if timeout is not None and (not isinstance(timeout, (int, float)) or timeout < 0):
        raise InputError(f"parameters.timeout must be microseconds >= 0, got {timeout!r}")
    rid = doc.get("id")
    return InferRequest(
        inputs,
        outputs,
        str(rid) if rid is not None else None,
        timeout / 1000 if timeout else None,
        bool(params.get("binary_data_output", False)),
        params,
    )


def _tensor(t: Any, i: int, rest: memoryview) -> tuple[str, np.ndarray, int]:
    """One input tensor: ``(name, array, binary bytes it used)``."""
    if not isinstance(t, dict) or not isinstance(t.get("name"), str):
        raise InputError(f'input #{i} must be an object with a "name"')
    name = t["name"]
    dt = t.get("datatype")
    if dt == "BYTES":
        return _bytes_tensor(t, name, rest)
    if dt not in DATATYPES:
        known = ", ".join([*DATATYPES, "BYTES"])
        raise InputError(f"input {name!r}: datatype {dt!r} is not served; use one of {known}")
    shape = _shape(t, name)
    dtype = DATATYPES[dt]
    count = math.prod(shape)  # exact Python ints; np.prod of a list costs more than the parse
    size = _binary_size(t, name, rest)
    if size is not None:
        if size != count * dtype.itemsize:
            raise InputError(
                f"input {name!r}: binary_data_size is {size} bytes, but shape {shape} of "
                f"{dt} needs {count * dtype.itemsize}"
            )
        return name, np.frombuffer(rest[:size], dtype=dtype).reshape(shape), size
    if "data" not in t:
        raise InputError(f'input {name!r} has neither "data" nor parameters.binary_data_size')
    try:
        arr = np.asarray(t["data"], dtype=dtype)
    except (TypeError, ValueError, OverflowError) as e:
        raise InputError(f"input {name!r}: its data is not {dt} values: {e}") from None
    if arr.size != count:
        raise InputError(
            f"input {name!r}: {arr.size} values given, but shape {shape} needs {count}"
        )
    return name, arr.reshape(shape), 0


def _binary_size(t: dict, name: str, rest: memoryview) -> int | None:
    """The input's ``parameters.binary_data_size`` (None: its data is JSON), checked against
    the binary data left in the body."""
    p = t.get("parameters") or {}
    size = p.get("binary_data_size") if isinstance(p, dict) else None
    if size is not None and (not isinstance(size, int) or size < 0 or size > len(rest)):
        raise InputError(
            f"input {name!r}: binary_data_size {size!r} exceeds the {len(rest)} bytes of "
            "binary data left in the body"
        )
    return size


def _shape(t: dict, name: str) -> list[int]:
    shape = t.get("shape")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise InputError(f'input {name!r}: "shape" must be a list of sizes >= 0, got {shape!r}')
    return shape


def _bytes_tensor(t: dict, name: str, rest: memoryview) -> tuple[str, np.ndarray, int]:
    """A BYTES input as an object array of str: from JSON strings, or from the binary
    extension's elements (each a 4-byte little-endian length, then that many bytes)."""
    shape = _shape(t, name)
    count = math.prod(shape)
    size = _binary_size(t, name, rest)
    if size is not None:
        raw, items, at = bytes(rest[:size]), [], 0
        while at < size:
            if at + 4 > size:
                raise InputError(f"input {name!r}: BYTES element {len(items)} has a cut length")
            (n,) = struct.unpack_from("<I", raw, at)
            if at + 4 + n > size:
                raise InputError(
                    f"input {name!r}: BYTES element {len(items)} says {n} bytes, but only "
                    f"{size - at - 4} are left in its binary data"
                )
            items.append(raw[at + 4 : at + 4 + n])
            at += 4 + n
        used = size
    else:
        if "data" not in t:
            raise InputError(f'input {name!r} has neither "data" nor parameters.binary_data_size')
        items, used = _flat(t["data"]), 0
    if len(items) != count:
        raise InputError(
            f"input {name!r}: {len(items)} values given, but shape {shape} needs {count}"
        )
    out = np.empty(count, dtype=object)
    for i, v in enumerate(items):
        if isinstance(v, (bytes, bytearray)):
            try:
                v = bytes(v).decode("utf-8")
            except UnicodeDecodeError:
                raise InputError(f"input {name!r}: BYTES element {i} is not UTF-8 text") from None
        elif not isinstance(v, str):
            raise InputError(
                f"input {name!r}: BYTES element {i} is {type(v).__name__}, not a string"
            )
        out[i] = v
    return name, out.reshape(shape), used


def _flat(data: Any) -> list:
    """JSON tensor data, nested row-major or flat, as one flat list."""
    if not isinstance(data, list):
        return [data]
    out: list = []
    for d in data:
        out.extend(_flat(d) if isinstance(d, list) else [d])
    return out


def _bytes_raw(arr: np.ndarray) -> bytes:
    """An array of strings as the binary extension's BYTES elements."""
    parts = []
    for v in arr.ravel():
        b = v if isinstance(v, bytes) else str(v).encode("utf-8")
        parts += [struct.pack("<I", len(b)), b]
    return b"".join(parts)


def encode_infer(
    model: str,
    version: str,
    outputs: list[tuple[str, np.ndarray, bool]],
    request_id: str | None,
) -> tuple[bytes, int | None]:
    """The response body and, when some output travels as binary data, the JSON header's length
    (for the ``Inference-Header-Content-Length`` header)."""
    tensors, blobs = [], []
    for name, arr, binary in outputs:
        t: dict[str, Any] = {
            "name": name,
            "datatype": datatype(arr.dtype),
            "shape": list(arr.shape),
        }
        strings = arr.dtype.kind in "OSU"
        if binary:
            raw = _bytes_raw(arr) if strings else np.ascontiguousarray(arr).tobytes()
            t["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        elif strings:
            t["data"] = [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
                         for v in arr.ravel()]  # fmt: skip
        else:
            t["data"] = arr.ravel().tolist()
        tensors.append(t)
    doc: dict[str, Any] = {"model_name": model, "model_version": version, "outputs": tensors}
    if request_id is not None:
        doc["id"] = request_id
    head = json.dumps(doc, separators=(",", ":")).encode()
    if not blobs:
        return head, None
    return b"".join([head, *blobs]), len(head)
