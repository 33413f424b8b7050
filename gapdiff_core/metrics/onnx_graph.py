"""The few edits that make the shipped face models run in onnxruntime, on ONNX's protobuf wire format directly.

The ``onnx`` package is not used: its protobuf requirement (>= 3.20.2) conflicts with the pin of AUTOMATIC1111 and
Forge (protobuf 3.20.0). The OpenCV Zoo int8 models (YuNet, SFace) quantise their weights block-wise in a way only
OpenCV's DequantizeLinear accepts (a ``block_size`` on per-tensor scales, scales of a single block); OpenCV folds
those constants into float weights when it loads the model, and :func:`runnable_model` does the same:
``w = (q - zero_point) * scale``, each scale and zero point repeated over ``block_size`` elements along ``axis``.
It also frees fixed input sizes, drops declared inputs that no node reads, and adds outputs (e.g. SFace's
pre-dropout features, for SER-FIQ).
"""
from __future__ import annotations

import numpy as np

# ONNX field numbers (onnx.proto3)
MODEL_GRAPH = 7
GRAPH_NODE, GRAPH_INITIALIZER, GRAPH_INPUT, GRAPH_OUTPUT, GRAPH_VALUE_INFO = 1, 5, 11, 12, 13
NODE_INPUT, NODE_OUTPUT, NODE_OP_TYPE, NODE_ATTRIBUTE = 1, 2, 4, 5
ATTR_NAME, ATTR_INT, ATTR_TENSOR = 1, 3, 5
TENSOR_DIMS, TENSOR_TYPE, TENSOR_FLOATS, TENSOR_INT32S, TENSOR_INT64S, TENSOR_NAME, TENSOR_RAW = 1, 2, 4, 5, 7, 8, 9
VALUE_NAME, VALUE_TYPE = 1, 2
DTYPES = {1: np.float32, 2: np.uint8, 3: np.int8, 6: np.int32, 7: np.int64, 11: np.float64}
FLOAT = 1


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        b = buf[i]
        value |= (b & 0x7F) << shift
        i += 1
        if b < 0x80:
            return value, i
        shift += 7


def _encode_varint(v: int) -> bytes:
    v &= (1 << 64) - 1  # negative int64 as two's complement, as protobuf does
    out = bytearray()
    while True:
        out.append((v & 0x7F) | (0x80 if v > 0x7F else 0))
        v >>= 7
        if not v:
            return bytes(out)


def fields(buf: bytes) -> list[list]:
    """A message's fields in order: ``[number, wire type, value]`` (int for varints, bytes otherwise)."""
    out, i = [], 0
    while i < len(buf):
        key, i = _varint(buf, i)
        num, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 2:
            n, i = _varint(buf, i)
            value, i = bytes(buf[i:i + n]), i + n
        elif wire in (1, 5):
            n = 8 if wire == 1 else 4
            value, i = bytes(buf[i:i + n]), i + n
        else:
            raise ValueError(f"ONNX model: unsupported protobuf wire type {wire}")
        out.append([num, wire, value])
    return out


def encode(message: list[list]) -> bytes:
    out = bytearray()
    for num, wire, value in message:
        out += _encode_varint(num << 3 | wire)
        if wire == 0:
            out += _encode_varint(value)
        elif wire == 2:
            out += _encode_varint(len(value)) + value
        else:
            out += value
    return bytes(out)


def _get(message: list[list], num: int) -> list:
    return [v for n, _, v in message if n == num]


def _ints(message: list[list], num: int) -> list[int]:
    """A repeated integer field, packed or not, as signed int64s."""
    out = []
    for n, wire, v in message:
        if n != num:
            continue
        if wire == 0:
            out.append(v)
        else:
            i = 0
            while i < len(v):
                x, i = _varint(v, i)
                out.append(x)
    return [x - (1 << 64) if x >= 1 << 63 else x for x in out]


def tensor_array(tensor: bytes) -> tuple[str, np.ndarray]:
    """(name, values) of a serialised TensorProto."""
    t = fields(tensor)
    dims, dtype = _ints(t, TENSOR_DIMS), _ints(t, TENSOR_TYPE)[0]
    if dtype not in DTYPES:
        raise ValueError(f"ONNX model: unsupported tensor data type {dtype}")
    raw = _get(t, TENSOR_RAW)
    if raw:
        values = np.frombuffer(raw[0], DTYPES[dtype])
    elif dtype == FLOAT:
        values = np.frombuffer(b"".join(_get(t, TENSOR_FLOATS)), "<f4")
    else:
        values = np.array(_ints(t, TENSOR_INT64S if dtype == 7 else TENSOR_INT32S), DTYPES[dtype])
    name = _get(t, TENSOR_NAME)
    return (name[0].decode() if name else ""), values.reshape(dims).copy()


def tensor_proto(name: str, values: np.ndarray) -> bytes:
    """A float32 TensorProto holding ``values``."""
    values = np.ascontiguousarray(values, "<f4")
    return encode([[TENSOR_DIMS, 2, b"".join(_encode_varint(d) for d in values.shape)], [TENSOR_TYPE, 0, FLOAT],
                   [TENSOR_NAME, 2, name.encode()], [TENSOR_RAW, 2, values.tobytes()]])


def _strings(message: list[list], num: int) -> list[str]:
    return [v.decode() for v in _get(message, num)]


def dequantize(q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None, axis: int,
               block_size: int) -> np.ndarray:
    """``(q - zero_point) * scale`` in float32, each scale (zero point) covering ``block_size`` elements along
    ``axis`` (OpenCV's reading of DequantizeLinear; one scalar scale covers the whole tensor)."""
    def spread(p: np.ndarray) -> np.ndarray:
        p = np.asarray(p, np.float32)
        if p.size == 1:
            return p.reshape(())
        return np.repeat(p, max(block_size, 1), axis=axis).take(range(q.shape[axis]), axis=axis)
    zp = 0.0 if zero_point is None else spread(zero_point)
    return ((q.astype(np.float32) - zp) * spread(scale)).astype(np.float32)


def constants(model: bytes) -> dict[str, np.ndarray]:
    """Every initializer and Constant-node value of a model, by name."""
    graph = fields(_get(fields(model), MODEL_GRAPH)[0])
    out = dict(tensor_array(t) for t in _get(graph, GRAPH_INITIALIZER))
    for node in map(fields, _get(graph, GRAPH_NODE)):
        if _get(node, NODE_OP_TYPE) == [b"Constant"]:
            for attr in map(fields, _get(node, NODE_ATTRIBUTE)):
                if _get(attr, ATTR_TENSOR):
                    out[_strings(node, NODE_OUTPUT)[0]] = tensor_array(_get(attr, ATTR_TENSOR)[0])[1]
    return out


def _dequantized_node(node: list[list], init: dict[str, np.ndarray]) -> bytes | None:
    """The float initializer that replaces a DequantizeLinear node whose inputs are all constants, else None."""
    if _get(node, NODE_OP_TYPE) != [b"DequantizeLinear"]:
        return None
    names = [n for n in _strings(node, NODE_INPUT) if n]
    if not all(n in init for n in names):
        return None
    attrs = {_strings(a, ATTR_NAME)[0]: _ints(a, ATTR_INT) for a in map(fields, _get(node, NODE_ATTRIBUTE))}
    q = init[names[0]]
    axis = (attrs.get("axis") or [1])[0] % max(q.ndim, 1)
    w = dequantize(q, init[names[1]], init[names[2]] if len(names) > 2 else None, axis,
                   (attrs.get("block_size") or [0])[0])
    return tensor_proto(_strings(node, NODE_OUTPUT)[0], w)


def _free_dims(value_info: bytes, dims: dict[int, str]) -> bytes:
    """A graph input's ValueInfoProto with the dimensions ``dims`` (axis -> name) made symbolic."""
    vi = fields(value_info)
    for f in vi:
        if f[0] != VALUE_TYPE:
            continue
        typ = fields(f[2])
        tensor = fields(typ[0][2])
        for g in tensor:
            if g[0] == 2:  # shape
                shape = fields(g[2])
                axes = [d for d in shape if d[0] == 1]
                for axis, name in dims.items():
                    axes[axis][2] = encode([[2, 2, name.encode()]])
                g[2] = encode(shape)
        typ[0][2] = encode(tensor)
        f[2] = encode(typ)
    return encode(vi)


def runnable_model(model: bytes, free_dims: dict[int, str] | None = None, outputs: tuple[str, ...] = ()) -> bytes:
    """``model`` with its constant DequantizeLinear nodes folded into float weights, its first input's dimensions
    ``free_dims`` (axis -> symbolic name) freed, declared inputs that no node reads (or that are constants)
    dropped, and the float tensors ``outputs`` added as graph outputs."""
    top = fields(model)
    gf = next(f for f in top if f[0] == MODEL_GRAPH)
    graph = fields(gf[2])
    init = dict(tensor_array(t) for t in _get(graph, GRAPH_INITIALIZER))
    new_graph, folded, read, made = [], [], set(), set()
    for f in graph:
        if f[0] == GRAPH_NODE:
            node = fields(f[2])
            w = _dequantized_node(node, init)
            if w is not None:
                folded.append([GRAPH_INITIALIZER, 2, w])
                continue
            read.update(_strings(node, NODE_INPUT))
            made.update(_strings(node, NODE_OUTPUT))
        if f[0] == GRAPH_VALUE_INFO:  # shapes for a fixed input size; onnxruntime infers them again
            continue
        new_graph.append(f)
    graph, new_graph = new_graph + folded, []
    first = True
    for f in graph:
        if f[0] == GRAPH_INPUT:
            name = _strings(fields(f[2]), VALUE_NAME)[0]
            if name not in read or name in made or name in init:
                continue
            if first and free_dims:
                f = [f[0], f[1], _free_dims(f[2], free_dims)]
            first = False
        new_graph.append(f)
    tensor_type = encode([[1, 0, FLOAT]])
    for name in outputs:
        new_graph.append([GRAPH_OUTPUT, 2, encode([[VALUE_NAME, 2, name.encode()],
                                                   [VALUE_TYPE, 2, encode([[1, 2, tensor_type]])]])])
    gf[2] = encode(new_graph)
    return encode(top)
