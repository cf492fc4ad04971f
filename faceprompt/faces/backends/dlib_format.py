"""A reader for dlib's binary serialisation of its face descriptor network (``dlib_face_recognition_resnet_model_v1.dat``).

dlib writes a network as nested records: the loss layer, then each ``add_layer`` writes a version, its sub-network
(recursively, down to the input layer) and then its own layer's record, so the layer records come out in forward
order, input first. The encodings read here:

- integers: one header byte (low nibble: how many little-endian bytes follow; bit 7: negative), then the bytes;
- floats and doubles (scalars): a mantissa and an exponent, both integers as above (value = mantissa * 2**exponent);
- strings: an integer length, then the bytes; booleans: one byte, ``'1'`` or ``'0'`` in this file's era;
- tensors: version 2, four integers (samples, k, rows, columns), then little-endian float32 values;
- alias tensors (views into a layer's parameter tensor): version 1 and the four integers, no data.

dlib has no Python reader for its networks' weights, hence this one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...errors import ModelFilesMissingError

#: add_layer / add_tag_layer / add_skip_layer header versions; the add_layer holding the input layer writes 2 or 3.
ADD_LAYER_VERSION, TAG_OR_SKIP_VERSION, INPUT_ADD_LAYER_VERSIONS = 2, 1, (2, 3)
#: The input layer's name as dlib writes it (length, then the bytes): what ends the run of layer headers.
INPUT_LAYER_NAME = bytes([0x01, 21]) + b"input_rgb_image_sized"


@dataclass
class LayerRecord:
    """One layer as dlib serialised it: its kind (``"con"``, ``"affine"``, ``"relu"``, ``"max_pool"``,
    ``"avg_pool"``, ``"add_prev"``, ``"fc"``), its integer settings and its parameters as numpy arrays."""

    kind: str
    settings: dict[str, int] = field(default_factory=dict)
    params: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class DlibNetwork:
    """The parsed network: the input layer's per-channel means (RGB, in 0-255 units), the chip size, and the layer
    records in forward order."""

    input_means: tuple[float, float, float]
    input_size: tuple[int, int]
    layers: list[LayerRecord]


class _Reader:
    """Sequential reader of dlib's encodings over the file's bytes."""

    def __init__(self, data: bytes, source: str):
        self.data = data
        self.position = 0
        self.source = source

    def fail(self, what: str) -> ModelFilesMissingError:
        return ModelFilesMissingError(
            f"{self.source}: not a dlib face descriptor network file ({what} at byte {self.position}). Reinstall it "
            "with: pip install --force-reinstall face-recognition-models"
        )

    def take(self, count: int) -> bytes:
        if self.position + count > len(self.data):
            raise self.fail("unexpected end of file")
        chunk = self.data[self.position : self.position + count]
        self.position += count
        return chunk

    def integer(self) -> int:
        header = self.take(1)[0]
        size = header & 0x0F
        if size > 8:
            raise self.fail(f"bad integer header {header:#x}")
        value = int.from_bytes(self.take(size), "little")
        return -value if header & 0x80 else value

    def scalar(self) -> float:
        mantissa = self.integer()
        exponent = self.integer()
        return float(np.ldexp(float(mantissa), exponent))

    def string(self) -> str:
        return self.take(self.integer()).decode("latin-1")

    def boolean(self) -> bool:
        byte = self.take(1)
        if byte not in (b"0", b"1"):
            raise self.fail(f"bad boolean {byte!r}")
        return byte == b"1"

    def expect_version(self, allowed: tuple[int, ...], what: str) -> int:
        version = self.integer()
        if version not in allowed:
            raise self.fail(f"{what} version {version}, expected one of {allowed}")
        return version

    def shape(self) -> tuple[int, int, int, int]:
        return (self.integer(), self.integer(), self.integer(), self.integer())

    def tensor(self) -> np.ndarray:
        self.expect_version((2,), "tensor")
        shape = self.shape()
        count = int(np.prod(shape))
        return np.frombuffer(self.take(4 * count), dtype="<f4").reshape(shape)

    def alias_tensor(self) -> tuple[int, int, int, int]:
        self.expect_version((1,), "alias tensor")
        return self.shape()


def read_dlib_network(path: str | Path) -> DlibNetwork:
    """Parse ``dlib_face_recognition_resnet_model_v1.dat`` (a ``loss_metric`` network) into layer records.

    Raises:
        ModelFilesMissingError: the file is missing or is not such a network (names the file and the fix).
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFilesMissingError(
            f"dlib model file missing: {path}. Reinstall it with: pip install --force-reinstall face-recognition-models"
        )
    reader = _Reader(path.read_bytes(), str(path))
    reader.expect_version((1,), "loss layer")
    loss = reader.string()
    if not loss.startswith("loss_metric"):
        raise reader.fail(f"loss layer {loss!r}, expected loss_metric")
    reader.scalar(), reader.scalar()  # the training margin and distance threshold
    add_layers = 0
    while True:
        version = reader.integer()
        if reader.data.startswith(INPUT_LAYER_NAME, reader.position):
            break
        if version == ADD_LAYER_VERSION:
            add_layers += 1
        elif version != TAG_OR_SKIP_VERSION:
            raise reader.fail(f"layer header version {version}")
    input_version = version
    if input_version not in INPUT_ADD_LAYER_VERSIONS:
        raise reader.fail(f"input add_layer version {input_version}")
    means, size = _read_input_layer(reader)
    layers = [_read_layer_with_state(reader, input_version=input_version)]
    layers += [_read_layer_with_state(reader, input_version=None) for _ in range(add_layers)]
    if reader.position != len(reader.data):
        raise reader.fail(f"{len(reader.data) - reader.position} bytes left after the last layer")
    return DlibNetwork(input_means=means, input_size=size, layers=layers)


def _read_input_layer(
    reader: _Reader,
) -> tuple[tuple[float, float, float], tuple[int, int]]:
    name = reader.string()
    if name != "input_rgb_image_sized":
        raise reader.fail(f"input layer {name!r}, expected input_rgb_image_sized")
    means = (reader.scalar(), reader.scalar(), reader.scalar())
    return means, (reader.integer(), reader.integer())


def _read_layer_with_state(reader: _Reader, input_version: int | None) -> LayerRecord:
    """A layer's record followed by its ``add_layer``'s training state (flags and scratch tensors, discarded)."""
    record = _read_layer(reader)
    for _ in range(3):  # set-up done, gradient stale, output and gradient disabled
        reader.boolean()
    (
        reader.tensor(),
        reader.tensor(),
        reader.tensor(),
    )  # x_grad, cached output, parameter gradients
    if input_version == 3:
        reader.integer()  # sample expansion factor
    return record


def _read_layer(reader: _Reader) -> LayerRecord:
    name = reader.string()
    readers = {
        "con_4": _read_con,
        "con_5": _read_con,
        "affine_": _read_affine,
        "relu_": lambda _reader: LayerRecord("relu"),
        "max_pool_2": lambda reader: _read_pool(reader, "max_pool"),
        "avg_pool_2": lambda reader: _read_pool(reader, "avg_pool"),
        "add_prev_": lambda _reader: LayerRecord("add_prev"),
        "fc_2": _read_fc,
    }
    if name not in readers:
        raise reader.fail(f"unsupported layer {name!r}")
    record = readers[name](reader)
    if name == "con_5":
        reader.boolean()  # use_bias: the bias values are in the parameters either way
    return record


def _read_con(reader: _Reader) -> LayerRecord:
    params = reader.tensor().reshape(-1)
    settings = {key: reader.integer() for key in ("filters", "rows", "columns", "stride_y", "stride_x")}
    settings |= {"padding_y": reader.integer(), "padding_x": reader.integer()}
    filters, biases = reader.alias_tensor(), reader.alias_tensor()
    for _ in range(4):  # learning-rate and weight-decay multipliers
        reader.scalar()
    weight_count = int(np.prod(filters))
    weight = params[:weight_count].reshape(filters)
    bias = params[weight_count : weight_count + int(np.prod(biases))]
    return LayerRecord("con", settings, {"weight": weight, "bias": bias})


def _read_affine(reader: _Reader) -> LayerRecord:
    params = reader.tensor().reshape(-1)
    gamma, beta = reader.alias_tensor(), reader.alias_tensor()
    reader.integer()  # mode: per channel (convolutional) or per value
    channels = int(np.prod(gamma))
    if int(np.prod(beta)) != channels or params.size != 2 * channels:
        raise reader.fail("affine layer with mismatched scale and shift")
    return LayerRecord(
        "affine",
        {"channels": channels},
        {"scale": params[:channels], "shift": params[channels:]},
    )


def _read_pool(reader: _Reader, kind: str) -> LayerRecord:
    keys = ("rows", "columns", "stride_y", "stride_x", "padding_y", "padding_x")
    return LayerRecord(kind, {key: reader.integer() for key in keys})


def _read_fc(reader: _Reader) -> LayerRecord:
    outputs, inputs = reader.integer(), reader.integer()
    params = reader.tensor().reshape(-1)
    reader.alias_tensor(), reader.alias_tensor()
    has_bias = reader.integer() == 0  # dlib's FC_HAS_BIAS is 0, FC_NO_BIAS 1
    for _ in range(4):
        reader.scalar()
    weight = params[: inputs * outputs].reshape(inputs, outputs)
    bias = params[inputs * outputs :] if has_bias else np.zeros(outputs, dtype=np.float32)
    return LayerRecord("fc", {"outputs": outputs, "inputs": inputs}, {"weight": weight, "bias": bias})
