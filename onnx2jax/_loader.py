"""The only module that touches protobuf: reads a model safely and converts it to the execution IR."""

from __future__ import annotations

import functools
import gc
import heapq
import mmap
import os
import sys
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
import onnx
import onnx.defs
from onnx import numpy_helper

from ._dtypes import to_numpy_dtype
from ._errors import ExternalDataError, ModelLoadError
from ._ir import Graph, Model, Node, TensorSpec

ModelSource = str | os.PathLike | bytes | IO[bytes] | onnx.ModelProto


def read_proto(source: ModelSource) -> tuple[onnx.ModelProto, str | None]:
    """Parse ``source`` into a ModelProto without touching external data; returns the base folder."""
    if isinstance(source, onnx.ModelProto):
        return source, None
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise ModelLoadError(f"model file {str(path)!r} does not exist or is not a file")
        data, base_dir = path.read_bytes(), str(path.resolve().parent)
    elif isinstance(source, (bytes, bytearray, memoryview)):
        data, base_dir = bytes(source), None
    elif hasattr(source, "read"):
        data, base_dir = source.read(), None
        name = getattr(source, "name", None)
        if isinstance(name, str) and os.path.isfile(name):
            base_dir = str(Path(name).resolve().parent)
    else:
        raise TypeError(
            f"cannot load a model from {type(source).__name__}; pass a path, bytes, "
            "a binary file object or an onnx.ModelProto"
        )
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except Exception as e:  # protobuf raises DecodeError, RuntimeWarning-wrapped errors, ...
        raise ModelLoadError(
            f"cannot parse the model ({len(data)} bytes): {e}. The file is truncated, corrupt "
            "or not an ONNX model."
        ) from None
    if not proto.HasField("graph"):
        raise ModelLoadError(
            f"the data ({len(data)} bytes) parsed but holds no graph: it is truncated, corrupt "
            "or not an ONNX model"
        )
    return proto, base_dir


# Field numbers of the protobuf messages the lean reader walks (onnx.proto).
_MODEL_GRAPH, _GRAPH_INITIALIZER = 7, 5


def _varint(buf, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _fields(buf, start: int, end: int):
    """``(field, wire type, field start, value start, value end)`` of one message's fields."""
    pos = start
    while pos < end:
        key, p = _varint(buf, pos)
        wire = key & 7
        if wire == 0:
            q = _varint(buf, p)[1]
        elif wire == 1:
            q = p + 8
        elif wire == 5:
            q = p + 4
        elif wire == 2:
            n, p = _varint(buf, p)
            q = p + n
        else:  # groups: never written by onnx
            raise ValueError(f"wire type {wire}")
        if q > end:
            raise ValueError("field runs past the end")
        yield key >> 3, wire, pos, p, q
        pos = q


def _key(field: int, size: int) -> bytes:
    out = bytearray()
    for v in ((field << 3) | 2, size):
        while v >= 0x80:
            out.append((v & 0x7F) | 0x80)
            v >>= 7
        out.append(v)
    return bytes(out)


def _read_lean(
    path: Path, base_dir: str
) -> tuple[onnx.ModelProto, dict[str, np.ndarray | None]] | None:
    """A model file parsed without ever holding all its bytes and all its weights at once.

    ``read_proto`` holds the file's bytes, then the parsed proto, then the arrays decoded from
    it: the weights two or three times (BERT-base: 1.04 GB peak for 418 MB of weights). Here the
    main graph's initializers are read and decoded one at a time; the proto gets a data-less
    placeholder for each (dims and type only). External, string and ml_dtypes tensors stay in
    the proto whole. None where the file does not scan as expected (read_proto then reports).
    """
    arrays: dict[str, np.ndarray | None] = {}
    if path.stat().st_size == 0:
        return None  # mmap refuses empty files; read_proto reports them
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        try:
            top = list(_fields(mm, 0, len(mm)))
            graphs = [x for x in top if x[0] == _MODEL_GRAPH and x[1] == 2]
            if len(graphs) != 1:
                return None
            _, _, _, g0, g1 = graphs[0]
            parts, tensors = [], []
            for field, wire, start, p, q in _fields(mm, g0, g1):
                if field == _GRAPH_INITIALIZER and wire == 2:
                    tensors.append((p, q))
                else:
                    parts.append(mm[start:q])
        except (ValueError, IndexError):
            return None
        placeholders = []
        for p, q in tensors:
            try:
                name, arr, placeholder = _read_tensor(f, mm, p, q, base_dir)
            except (ValueError, IndexError, OSError):
                return None
            arrays[name] = arr
            placeholders.append(placeholder)
        graph = b"".join([*parts, *(_key(_GRAPH_INITIALIZER, len(b)) + b for b in placeholders)])
        rest = b"".join(mm[x[2] : x[4]] for x in top if x is not graphs[0])
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(rest + _key(_MODEL_GRAPH, len(graph)) + graph)
    except Exception:
        return None
    return proto, arrays


def _read_tensor(
    f: IO[bytes], mm: mmap.mmap, p: int, q: int, base_dir: str
) -> tuple[str, np.ndarray | None, bytes]:
    """One initializer at ``[p, q)``: its name, array (None: left to ``convert``) and the bytes
    of the TensorProto that stands for it in the proto (data-less where decoded).

    A ``raw_data`` field is read straight from the file into a 64-byte aligned, read-only
    array: no protobuf copy, and the CPU device array can alias it (``jax.device_put``'s
    ``may_alias``) instead of copying it again.
    """
    fields = list(_fields(mm, p, q))
    raw = [x for x in fields if x[0] == _TENSOR_RAW_DATA and x[1] == 2]
    if len(raw) == 1 and raw[0][4] - raw[0][3] > _SMALL and sys.byteorder == "little":
        stub = onnx.TensorProto()
        stub.ParseFromString(b"".join(mm[x[2] : x[4]] for x in fields if x is not raw[0]))
        _, _, _, r0, r1 = raw[0]
        if (
            stub.data_type in _STANDARD
            and stub.data_location != onnx.TensorProto.EXTERNAL
            and not stub.HasField("segment")
        ):
            dtype = to_numpy_dtype(stub.data_type)
            shape = tuple(int(d) for d in stub.dims)
            if (
                min(shape, default=1) >= 0
                and r1 - r0 == np.prod(shape, dtype=object) * dtype.itemsize
            ):
                arr = _aligned_empty(r1 - r0).view(dtype).reshape(shape)
                view = memoryview(arr.reshape(-1).view(np.uint8))
                f.seek(r0)
                done = 0
                while done < len(view):
                    n = f.readinto(view[done:])
                    if not n:
                        raise ValueError("file is short")
                    done += n
                arr.flags.writeable = False
                return stub.name, arr, stub.SerializeToString()
    t = onnx.TensorProto()
    f.seek(p)
    try:
        t.ParseFromString(f.read(q - p))
    except Exception as e:  # protobuf's DecodeError: read_proto reports the file
        raise ValueError(str(e)) from None
    if (
        t.data_location == onnx.TensorProto.EXTERNAL
        or t.data_type not in _STANDARD
        or q - p <= _SMALL
    ):
        return t.name, None, t.SerializeToString()  # small, or decoded by convert
    arr = _to_array(t, base_dir)
    stub = onnx.TensorProto(name=t.name, data_type=t.data_type, dims=t.dims)
    return t.name, arr, stub.SerializeToString()


def _aligned_empty(nbytes: int, align: int = 64) -> np.ndarray:
    if nbytes >= _HUGE and hasattr(mmap, "MADV_HUGEPAGE"):
        # A page-aligned anonymous mapping in transparent huge pages where the kernel allows
        # them: reading a weight into fresh memory is mostly page faults, and 2 MiB pages
        # take 512x fewer (BERT-base's 418 MB: 1.0-1.5 s -> 0.4 s in a fresh process).
        # The array keeps the mapping alive; it is unmapped with the last reference.
        mm = mmap.mmap(-1, nbytes)
        try:
            mm.madvise(mmap.MADV_HUGEPAGE)
        except OSError:
            pass  # THP off: 4 KiB pages, as np.empty would give
        return np.frombuffer(mm, np.uint8)
    buf = np.empty(nbytes + align, np.uint8)
    start = (-buf.ctypes.data) % align
    return buf[start : start + nbytes]


_TENSOR_RAW_DATA = 9
_COLLECT_BYTES = 64 << 20  # a parsed model this large is collected right after the passes
_HUGE = 2 << 20  # weights from this size get their own (huge-page) mapping
# Tensors up to this size keep their data in the proto, so shape inference sees shape
# constants (onnx-ir's shape inference pass draws the same line).
_SMALL = 1000
# Element types decoded to plain numpy (bool, ints, float16/32/64) by the lean reader.
_STANDARD = frozenset(
    code
    for code in onnx.TensorProto.DataType.values()
    if code and np.dtype(onnx.helper.tensor_dtype_to_np_dtype(code)).kind in "biuf"
)


def _read_external(tensor: onnx.TensorProto, base_dir: str | None) -> onnx.TensorProto:
    """Return a copy of ``tensor`` with its external data read in, refusing paths outside base_dir."""
    info = {e.key: e.value for e in tensor.external_data}
    location = info.get("location", "")
    where = f"tensor {tensor.name!r} stores its data in external file {location!r}"
    if base_dir is None:
        raise ExternalDataError(
            f"{where}, but the model was not loaded from a file path; load it from its path "
            "(or pass base_dir=) so the file can be found"
        )
    if "\x00" in location:
        raise ExternalDataError(f"{where}: a location containing a NUL byte is refused")
    if not location or os.path.isabs(location) or Path(location).drive:
        raise ExternalDataError(f"{where}: an absolute or empty location is refused (unsafe)")
    if ".." in Path(location).parts:
        raise ExternalDataError(f"{where}: a location containing '..' is refused (unsafe)")
    root = os.path.realpath(base_dir)
    full = os.path.realpath(os.path.join(root, location))
    if os.path.commonpath([root, full]) != root:
        raise ExternalDataError(
            f"{where}: it resolves outside the model's folder {root!r} (symlink?), refused (unsafe)"
        )
    if not os.path.isfile(full):
        raise ExternalDataError(f"{where}, but {full!r} does not exist; copy it beside the model")
    size = os.path.getsize(full)
    offset = _external_int(info, "offset", 0, where)
    length = _external_int(info, "length", max(size - offset, 0), where)
    if offset + length > size:
        raise ExternalDataError(
            f"{where}: its offset {offset} and length {length} reach past the end of "
            f"{full!r} ({size} bytes); the file is truncated or the entry is wrong"
        )
    try:
        with open(full, "rb") as f:
            f.seek(offset)
            data = f.read(length)
    except OSError as e:
        raise ExternalDataError(f"{where}, but reading {full!r} failed: {e}") from None
    if len(data) != length:
        raise ExternalDataError(
            f"{where}: expected {length} bytes at offset {offset}, file is short"
        )
    out = onnx.TensorProto()
    out.CopyFrom(tensor)
    del out.external_data[:]
    out.data_location = onnx.TensorProto.DEFAULT
    out.raw_data = data
    return out


def _external_int(info: dict[str, str], key: str, default: int, where: str) -> int:
    """A non-negative integer field (``offset``, ``length``) of an external-data entry."""
    if key not in info:
        return default
    text = info[key].strip()
    if not text.isdigit() or not text.isascii():
        raise ExternalDataError(
            f"{where}: its {key!r} is {info[key]!r}, not a non-negative integer; fix the entry"
        )
    return int(text)


def _to_array(tensor: onnx.TensorProto, base_dir: str | None) -> np.ndarray:
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        tensor = _read_external(tensor, base_dir)
    try:
        return numpy_helper.to_array(tensor)
    except Exception as e:  # onnx raises KeyError, ValueError, TypeError, ... on corrupt data
        raise ModelLoadError(
            f"cannot decode tensor {tensor.name!r} (data_type {tensor.data_type}, dims "
            f"{list(tensor.dims)}): {type(e).__name__}: {e}. The tensor is corrupt; re-export it"
        ) from None


def _spec(vi: onnx.ValueInfoProto, where: str) -> TensorSpec:
    t = vi.type
    which = t.WhichOneof("value")
    if which == "tensor_type":
        tt = t.tensor_type
        try:
            dtype = to_numpy_dtype(tt.elem_type) if tt.elem_type else None
        except ValueError:
            raise ModelLoadError(
                f"{where} {vi.name!r} declares element type {tt.elem_type}, which is no ONNX "
                "TensorProto.DataType; fix the exporter or the model's type"
            ) from None
        shape = None
        if tt.HasField("shape"):
            shape = tuple(
                d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                for d in tt.shape.dim
            )
        return TensorSpec(vi.name, dtype, shape)
    kind = {
        "sequence_type": "sequence",
        "optional_type": "optional",
        "map_type": "map",
        "sparse_tensor_type": "sparse_tensor",
    }.get(which or "", "unknown")
    return TensorSpec(vi.name, None, None, kind=kind)


@functools.cache
def _schema(domain: str, op_type: str, opset: int) -> onnx.defs.OpSchema | None:
    try:
        return onnx.defs.get_schema(op_type, opset, domain)
    except Exception:  # no such op (custom domains, typos: the tracer reports unsupported ops)
        return None


def _check_attrs(n: onnx.NodeProto, node: Node, opset: int) -> None:
    """A node's attributes against its ONNX schema: required ones present, types as declared."""
    schema = _schema(node.domain, node.op_type, opset)
    if schema is None:
        return
    given = set()
    for a in n.attribute:
        given.add(a.name)
        want = schema.attributes.get(a.name)
        if want is not None and int(a.type) != int(want.type):
            got = (
                onnx.AttributeProto.AttributeType.Name(a.type) if a.type in _ATTR_TYPES else a.type
            )
            raise ModelLoadError(
                f"{node.describe()} (opset {opset}): attribute {a.name!r} is a {got}, but the "
                f"operator's spec wants {want.type.name}; fix the exporter or the node"
            )
    lacking = sorted(k for k, a in schema.attributes.items() if a.required and k not in given)
    if lacking:
        raise ModelLoadError(
            f"{node.describe()} (opset {opset}) lacks its required attribute(s) {lacking}; "
            "fix the exporter or the node"
        )


_ATTR_TYPES = frozenset(onnx.AttributeProto.AttributeType.values())


class _Converter:
    def __init__(self, base_dir: str | None, opsets: dict[str, int] | None = None):
        self.base_dir = base_dir
        self.opsets = opsets or {}

    def attr(self, a: onnx.AttributeProto, outer: frozenset[str], where: str) -> Any:
        """An attribute's value as plain Python (``where`` names its node, for errors)."""
        try:
            return self._attr(a, outer)
        except ModelLoadError as e:
            if where in str(e):  # a node inside a subgraph attribute already named itself
                raise
            raise type(e)(f"{where}, attribute {a.name!r}: {e}") from None

    def _attr(self, a: onnx.AttributeProto, outer: frozenset[str]) -> Any:
        A = onnx.AttributeProto
        if a.ref_attr_name:
            raise ModelLoadError("it refers to a function attribute; unsupported")
        if a.type == A.FLOAT:
            return float(a.f)
        if a.type == A.INT:
            return int(a.i)
        if a.type == A.STRING:
            return a.s.decode("utf-8", errors="replace")
        if a.type == A.TENSOR:
            return _to_array(a.t, self.base_dir)
        if a.type == A.SPARSE_TENSOR:
            return self.sparse(a.sparse_tensor)
        if a.type == A.GRAPH:
            return self.graph(a.g, outer)
        if a.type == A.FLOATS:
            return [float(x) for x in a.floats]
        if a.type == A.INTS:
            return [int(x) for x in a.ints]
        if a.type == A.STRINGS:
            return [s.decode("utf-8", errors="replace") for s in a.strings]
        if a.type == A.TENSORS:
            return [_to_array(t, self.base_dir) for t in a.tensors]
        if a.type == A.GRAPHS:
            return [self.graph(g, outer) for g in a.graphs]
        if a.type == A.TYPE_PROTO:
            return a.tp
        raise ModelLoadError(f"its type {a.type} is no ONNX attribute type")

    def sparse(self, sp: onnx.SparseTensorProto) -> np.ndarray:
        """The dense array of a sparse tensor (COO: linear ``[NNZ]`` or ``[NNZ, rank]`` indices)."""
        name = sp.values.name
        dims = tuple(int(d) for d in sp.dims)
        where = f"sparse tensor {name!r} (dims {list(dims)})"
        if any(d < 0 for d in dims):
            raise ModelLoadError(f"{where}: negative dims; fix the exporter")
        values = _to_array(sp.values, self.base_dir).reshape(-1)
        idx = _to_array(sp.indices, self.base_dir) if sp.indices.dims else np.zeros((0,), np.int64)
        nnz = len(values)
        if idx.dtype.kind not in "iu":
            raise ModelLoadError(
                f"{where}: its indices have dtype {idx.dtype}, not an integer type"
            )
        if idx.ndim == 1:
            bounds = (int(np.prod(dims, dtype=object)),)
        elif idx.ndim == 2 and idx.shape[1] == len(dims):
            bounds = dims
        else:
            raise ModelLoadError(
                f"{where}: its indices have shape {list(idx.shape)}; the format wants [NNZ] "
                f"(linear) or [NNZ, {len(dims)}] (one row of coordinates per value)"
            )
        if len(idx) != nnz:
            raise ModelLoadError(f"{where}: {len(idx)} indices for {nnz} values; they must match")
        cols = idx.reshape(nnz, -1)
        for j, bound in enumerate(bounds):
            col = cols[:, j]
            if nnz and (col.min() < 0 or col.max() >= bound):
                raise ModelLoadError(
                    f"{where}: an index on axis {j} lies outside [0, {bound}): "
                    f"{int(col.min())}..{int(col.max())}"
                )
        try:
            dense = np.zeros(dims, dtype=values.dtype)
        except (MemoryError, ValueError) as e:
            raise ModelLoadError(f"{where}: cannot allocate its dense form ({e})") from None
        if idx.ndim == 1:
            dense.reshape(-1)[idx] = values
        else:
            dense[tuple(idx.T)] = values
        return dense

    def graph(
        self,
        g: onnx.GraphProto,
        outer: frozenset[str] = frozenset(),
        arrays: dict[str, np.ndarray | None] | None = None,
    ) -> Graph:
        # ``arrays``: initializers in order, already decoded (``g`` has a data-less placeholder
        # or nothing for them) or None (decoded from ``g`` here); then the rest of ``g``'s.
        protos = {t.name: t for t in g.initializer}
        inits: dict[str, np.ndarray] = {}
        for name, arr in (arrays or {}).items():
            t = protos.pop(name, None)
            inits[name] = arr if arr is not None or t is None else _to_array(t, self.base_dir)
        for name, t in protos.items():
            inits[name] = _to_array(t, self.base_dir)
        for sp in g.sparse_initializer:
            inits[sp.values.name] = self.sparse(sp)
        inputs = [_spec(v, f"graph {g.name!r}: input") for v in g.input if v.name not in inits]
        outputs = [_spec(v, f"graph {g.name!r}: output") for v in g.output]
        defined = {v.name for v in g.input} | set(inits)
        for n in g.node:
            defined.update(o for o in n.output if o)
        scope = frozenset(outer | defined)
        nodes, deps = [], []
        for i, n in enumerate(g.node):
            domain = n.domain if n.domain != "ai.onnx" else ""
            name = n.name or f"{n.op_type}_{i}"
            node = Node(n.op_type, domain, name, tuple(n.input), tuple(n.output))
            _check_attrs(n, node, self.opsets.get(domain, 1))
            where = f"graph {g.name!r}: {node.describe()}"
            attrs = {a.name: self.attr(a, scope, where) for a in n.attribute}
            node = Node(n.op_type, domain, name, tuple(n.input), tuple(n.output), attrs)
            # A node also depends on the outer-scope names its subgraphs read.
            free = set()
            for v in attrs.values():
                for sub in v if isinstance(v, list) else [v]:
                    if isinstance(sub, Graph):
                        free |= sub.outer_names
            nodes.append(node)
            deps.append([x for x in n.input if x] + sorted(free))
        sorted_nodes = _toposort(
            g.name, nodes, deps, available=set(inits) | {v.name for v in g.input}, outer=outer
        )
        used = {x for d in deps for x in d} | {o.name for o in outputs}
        for o in outputs:
            if o.name not in defined and o.name not in outer:
                raise ModelLoadError(
                    f"graph {g.name!r}: output {o.name!r} is produced by no node, input or initializer"
                )
        return Graph(
            g.name,
            sorted_nodes,
            inputs,
            outputs,
            inits,
            outer_names=frozenset(x for x in used if x not in defined and x in outer),
        )


def _toposort(
    gname: str, nodes: list[Node], deps: list[list[str]], available: set[str], outer: Iterable[str]
) -> list[Node]:
    """Kahn's algorithm, stable in file order; reports dangling inputs and cycles by node name."""
    producer: dict[str, int] = {}
    for i, n in enumerate(nodes):
        for o in n.outputs:
            if o:
                producer[o] = i
    outer = set(outer)
    waiting = [0] * len(nodes)
    users: dict[int, list[int]] = {i: [] for i in range(len(nodes))}
    for i, d in enumerate(deps):
        for name in d:
            if name in producer:
                waiting[i] += 1
                users[producer[name]].append(i)
            elif name not in available and name not in outer:
                raise ModelLoadError(
                    f"graph {gname!r}: {nodes[i].describe()} reads {name!r}, which no node, graph "
                    "input or initializer produces (dangling input). Fix the exporter or the graph."
                )
    ready = [i for i in range(len(nodes)) if waiting[i] == 0]
    order: list[int] = []
    heapq.heapify(ready)
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for u in users[i]:
            waiting[u] -= 1
            if waiting[u] == 0:
                heapq.heappush(ready, u)
    if len(order) != len(nodes):
        stuck = [nodes[i].describe() for i in range(len(nodes)) if waiting[i] > 0][:5]
        raise ModelLoadError(
            f"graph {gname!r} has a cycle; nodes that can never run include: {', '.join(stuck)}"
        )
    return [nodes[i] for i in order]


def convert(
    proto: onnx.ModelProto,
    base_dir: str | None = None,
    arrays: dict[str, np.ndarray | None] | None = None,
) -> Model:
    """Convert a ModelProto (external data resolved relative to ``base_dir``) to the IR.

    ``arrays``: the main graph's initializers in order, decoded (and absent from ``proto`` or
    a data-less placeholder there) or None (decoded from ``proto``).
    """
    opsets = {
        (o.domain if o.domain != "ai.onnx" else ""): int(o.version) for o in proto.opset_import
    }
    if "" not in opsets and proto.ir_version < 3:
        opsets[""] = 1
    graph = _Converter(base_dir, opsets).graph(proto.graph, arrays=arrays)
    return Model(graph, opsets, int(proto.ir_version), proto.producer_name, base_dir)


def load_model(
    source: ModelSource, base_dir: str | None = None, passes: Sequence[str] = ()
) -> Model:
    """Read ``source``, run the graph ``passes`` (names from ``onnx2jax.passes``), convert to IR."""
    lean = None
    if isinstance(source, (str, os.PathLike)) and os.path.isfile(source):
        path = Path(source)
        folder = base_dir if base_dir is not None else str(path.resolve().parent)
        lean = _read_lean(path, folder)
    if lean is not None:
        (proto, read), lean = lean, None  # no reference left behind: gc below frees it
    else:
        (proto, found_dir), read = read_proto(source), {}
        folder = base_dir if base_dir is not None else found_dir
    if not passes:
        return convert(proto, folder, read)
    try:
        optimized, report, arrays = _optimize_for_load(proto, passes, read)
    except Exception as e:
        model = convert(proto, folder, read)  # a malformed model raises its ModelLoadError here
        # A well-formed model the passes fail on is a bug of ours: run the graph as written.
        warnings.warn(
            f"graph passes skipped ({type(e).__name__}: {e}); running the graph as written. "
            "Please report this with the model; load(..., passes=None) silences it.",
            stacklevel=3,
        )
        return model
    if not any(a is not None for a in read.values()) and proto.ByteSize() > _COLLECT_BYTES:
        # onnx-ir's graph is a web of cycles whose tensors hold the parsed proto (every
        # weight): collect it now, not at some later gc run (BERT-base: 1.47 -> 1.06 GB
        # while converting). After the lean reader the proto holds no weights, and the
        # arrays the graph holds are the ones the model keeps: no need. Nor for a small
        # model: a collection costs ~100 ms with JAX imported (a test suite's thousands of
        # loads), more than the memory it frees is worth.
        del proto
        gc.collect()
    model = convert(optimized, folder, arrays)
    model.pass_report = report
    return model


@functools.cache
def _libc_trim():
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (macOS, Windows, musl)
        return None


def trim_heap() -> None:
    """Give the C heap's free pages back to the OS (glibc; a no-op elsewhere).

    Loading frees a weight-sized buffer per initializer (file bytes, protobuf, numpy copies);
    glibc keeps such holes in its heap rather than unmapping them, and RSS stays up by a
    third of the weights (BERT-base: 927 -> 675 MB after ``load``). A few milliseconds.
    """
    trim = _libc_trim()
    if trim is not None:
        trim(0)


def _infer_shapes(proto: onnx.ModelProto, read: dict[str, np.ndarray | None]) -> onnx.ModelProto:
    """``proto`` with onnx's inferred ``value_info``: what onnx-ir's ShapeInferencePass does
    (data-less initializers as typed graph inputs, strict mode off, data propagation on),
    without serializing and deserializing the whole graph again (BERT-base: ~0.3 s)."""
    work = onnx.ModelProto()
    work.CopyFrom(proto)  # small: the weights are placeholders
    g = work.graph
    kept = [t for t in g.initializer if read.get(t.name) is None]
    moved = [t for t in g.initializer if read.get(t.name) is not None]
    del g.initializer[:]
    g.initializer.extend(kept)
    n_inputs = len(g.input)
    declared = {v.name for v in g.input}
    g.input.extend(
        onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
        for t in moved
        if t.name not in declared
    )
    try:
        work = onnx.shape_inference.infer_shapes(work, check_type=True, data_prop=True)
    except Exception:  # as onnx-ir's pass: a model inference fails on is left as it is
        return proto
    g = work.graph
    del g.input[n_inputs:]
    del g.initializer[:]
    g.initializer.extend(proto.graph.initializer)
    return work


def _optimize_for_load(
    proto: onnx.ModelProto, passes: Sequence[str], read: dict[str, np.ndarray | None]
) -> tuple[onnx.ModelProto, Any, dict[str, np.ndarray | None]]:
    """``optimize_proto`` for ``load``: the main graph's initializers come back as numpy arrays
    beside a proto that lacks them, instead of being serialized into a second proto (which held
    every weight a third time: BERT-base +418 MB). External, string and ml_dtypes tensors stay
    in the proto, for the loader's own checks and decoding. ``read``: the arrays of the
    proto's data-less placeholders (``_read_lean``)."""
    import onnx_ir

    from ._dtypes import to_numpy_dtype
    from .passes import optimize

    lean = any(a is not None for a in read.values())
    if lean:  # shapes inferred on the small proto, not on a re-serialized copy of the graph
        proto = _infer_shapes(proto, read)
    model = onnx_ir.serde.deserialize_model(proto)
    inits = model.graph.initializers
    for name, arr in read.items():
        if arr is not None:
            inits[name].const_value = onnx_ir.Tensor(arr, name=name)
    report = optimize(model, passes, infer_shapes=not lean)
    if not report.modified:
        return proto, report, read
    arrays: dict[str, np.ndarray | None] = {}
    for name, value in list(inits.items()):
        arrays[name] = None  # stays in the proto unless decoded below (keeps the order)
        tensor = value.const_value
        if tensor is None or isinstance(tensor, onnx_ir.ExternalTensor):
            continue
        if tensor.dtype.value == 0 or tensor.dtype.numpy().kind not in "biuf":
            continue
        arr = tensor.numpy()
        want = to_numpy_dtype(tensor.dtype.value)
        if arr.dtype != want or arr.shape != tuple(tensor.shape.numpy()):
            continue
        arrays[name] = arr
        del inits[name]
    return onnx_ir.serde.serialize_model(model), report, arrays


def optimize_proto(
    proto: onnx.ModelProto, passes: Sequence[str], *, portable: bool = False
) -> tuple[onnx.ModelProto, Any]:
    """Run the graph passes on ``proto`` through onnx-ir; the proto is returned as is when
    nothing changed. ``portable`` adds standard-ONNX bodies for the ops the passes introduced
    (what ``onnx2jax optimize`` writes). External data stays external (onnx-ir keeps the
    references), so the loader's own checks still read it."""
    import onnx_ir

    from .passes import optimize
    from .passes.functions import add_functions

    model = onnx_ir.serde.deserialize_model(proto)
    report = optimize(model, passes)
    if portable:
        add_functions(model)
    elif not report.modified:
        return proto, report
    return onnx_ir.serde.serialize_model(model), report


__all__ = ["ModelSource", "read_proto", "convert", "load_model", "trim_heap"]
