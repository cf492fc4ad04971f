"""dlib's 128-d face descriptor network in torch, with the weights read from dlib's own model file at run time.

The ``dlib-bin`` wheel runs this ResNet without BLAS (about 70-100 ms per face on one core); torch runs the same
254M multiply-adds through oneDNN/BLAS several times faster, batches faces across photos and runs on a GPU.
The network is rebuilt from the layer records of the file (see :mod:`.dlib_format`): a stem
(conv 7x7/2, affine, relu, max-pool 3x3/2), residual blocks ``relu(x + affine(conv(relu(affine(conv(x))))))``
whose down-sampling variant adds a 2x2 average pool of ``x`` instead of ``x`` itself, a global average pool and a
128-output linear layer without bias.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...errors import BackendError
from .dlib_format import DlibNetwork, LayerRecord, read_dlib_network


def _conv_with_affine(con: LayerRecord, affine: LayerRecord) -> nn.Conv2d:
    """dlib's convolution followed by its affine layer (batch norm folded at training time) as one convolution:
    ``scale * (w * x + b) + shift == (scale * w) * x + (scale * b + shift)``."""
    settings = con.settings
    weight = torch.from_numpy(con.params["weight"].copy())
    conv = nn.Conv2d(
        weight.shape[1],
        weight.shape[0],
        kernel_size=(settings["rows"], settings["columns"]),
        stride=(settings["stride_y"], settings["stride_x"]),
        padding=(settings["padding_y"], settings["padding_x"]),
    )
    scale = torch.from_numpy(affine.params["scale"].copy())
    shift = torch.from_numpy(affine.params["shift"].copy())
    with torch.no_grad():
        conv.weight.copy_(weight * scale[:, None, None, None])
        conv.bias.copy_(torch.from_numpy(con.params["bias"].copy()) * scale + shift)
    return conv


def _pool_settings(record: LayerRecord) -> dict:
    settings = record.settings
    return dict(
        kernel_size=(settings["rows"], settings["columns"]),
        stride=(settings["stride_y"], settings["stride_x"]),
        padding=(settings["padding_y"], settings["padding_x"]),
    )


def _add_zero_padded(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """dlib's ``add_prev``: the sum over the larger of each dimension, a tensor missing channels, rows or columns
    counting as zero there (at the end)."""
    channels, rows, columns = (max(a, b) for a, b in zip(first.shape[1:], second.shape[1:]))

    def grow(tensor: torch.Tensor) -> torch.Tensor:
        _, c, h, w = tensor.shape
        if (c, h, w) == (channels, rows, columns):
            return tensor
        return F.pad(tensor, (0, columns - w, 0, rows - h, 0, channels - c))

    return grow(first) + grow(second)


class ResidualBlock(nn.Module):
    """``relu(shortcut(x) + conv2(relu(conv1(x))))``, the shortcut being ``x`` or a 2x2 average pool of it."""

    def __init__(self, conv1: nn.Conv2d, conv2: nn.Conv2d, shortcut_pool: dict | None):
        super().__init__()
        self.conv1 = conv1
        self.conv2 = conv2
        self.shortcut_pool = shortcut_pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.conv2(F.relu(self.conv1(x)))
        shortcut = x if self.shortcut_pool is None else F.avg_pool2d(x, **self.shortcut_pool)
        if shortcut.shape == residual.shape:
            return F.relu(residual + shortcut)
        return F.relu(_add_zero_padded(residual, shortcut))


class DlibResNet(nn.Module):
    """The descriptor network; input: RGB chips as uint8 ``[N, rows, columns, 3]``; output: ``[N, 128]`` float32,
    dlib's ``compute_face_descriptor`` values (not normalised)."""

    def __init__(self, network: DlibNetwork):
        super().__init__()
        layers = list(network.layers)
        kinds = [record.kind for record in layers]
        if kinds[:4] != ["con", "affine", "relu", "max_pool"] or kinds[-2:] != [
            "avg_pool",
            "fc",
        ]:
            raise BackendError(f"unexpected dlib descriptor layout: starts {kinds[:4]}, ends {kinds[-2:]}")
        self.input_size = network.input_size
        self.input_means = network.input_means
        self.stem = _conv_with_affine(layers[0], layers[1])
        self.stem_pool = _pool_settings(layers[3])
        self.blocks = nn.ModuleList(_read_blocks(layers[4:-2]))
        fc = layers[-1]
        self.fc = nn.Linear(fc.settings["inputs"], fc.settings["outputs"], bias=True)
        with torch.no_grad():
            self.fc.weight.copy_(torch.from_numpy(fc.params["weight"].T.copy()))
            self.fc.bias.copy_(torch.from_numpy(fc.params["bias"].copy()))

    def forward(self, chips: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.input_means, device=chips.device).view(1, 3, 1, 1)
        x = (chips.permute(0, 3, 1, 2).float() - mean) / 256.0  # dlib's input_rgb_image_sized, in float32
        x = x.to(self.fc.weight.dtype)
        x = F.max_pool2d(F.relu(self.stem(x)), **self.stem_pool)
        for block in self.blocks:
            x = block(x)
        return self.fc(x.mean(dim=(2, 3)))

    @torch.inference_mode()
    def conv_shapes(self) -> list[tuple[int, int, int, int]]:
        """``(in channels, out channels, kernel side, output side)`` of each convolution, in forward order, read
        from a run on one chip: the work the network does, the feature maps dlib's ``add_prev`` pads included."""
        shapes: list[tuple[int, int, int, int]] = []

        def record(module: nn.Conv2d, _inputs: tuple, output: torch.Tensor) -> None:
            shapes.append((module.in_channels, module.out_channels, module.kernel_size[0], output.shape[-1]))

        hooks = [module.register_forward_hook(record) for module in self.modules() if isinstance(module, nn.Conv2d)]
        try:
            self(torch.zeros(1, *self.input_size, 3, dtype=torch.uint8, device=self.fc.weight.device))
        finally:
            for hook in hooks:
                hook.remove()
        return shapes


def _read_blocks(records: list[LayerRecord]) -> list[ResidualBlock]:
    """Residual blocks from the records between the stem and the head: ``con affine relu con affine
    [avg_pool] add_prev relu`` each."""
    blocks = []
    position = 0
    while position < len(records):
        kinds = [record.kind for record in records[position : position + 9]]
        down = kinds[5:6] == ["avg_pool"]
        expected = ["con", "affine", "relu", "con", "affine"] + (["avg_pool"] if down else []) + ["add_prev", "relu"]
        if kinds[: len(expected)] != expected:
            raise BackendError(f"unexpected dlib residual block at layer {position + 4}: {kinds[: len(expected)]}")
        chunk = records[position : position + len(expected)]
        conv1, conv2 = (
            _conv_with_affine(chunk[0], chunk[1]),
            _conv_with_affine(chunk[3], chunk[4]),
        )
        blocks.append(ResidualBlock(conv1, conv2, _pool_settings(chunk[5]) if down else None))
        position += len(expected)
    return blocks


_load_lock = threading.Lock()


@cache
def _load_network(path: str) -> DlibResNet:
    return DlibResNet(read_dlib_network(path)).eval().requires_grad_(False)


def load_dlib_resnet(path: str | Path) -> DlibResNet:
    """The network of the ``.dat`` file at ``path`` in float32 on the CPU, parsed once per process (about 40 ms)
    and shared: callers must not modify it (use ``copy.deepcopy`` before moving or casting it)."""
    with _load_lock:
        return _load_network(str(Path(path).resolve()))


class DlibTorchDescriptor:
    """Batched 128-d descriptors of 150-px dlib chips with :class:`DlibResNet`.

    Args:
        model_path: dlib's ``dlib_face_recognition_resnet_model_v1.dat``.
        device: torch device; on a GPU the network runs in ``dtype``.
        dtype: ``None``: float32 on the CPU (bfloat16 is far slower there without native support), float16 on CUDA.
        batch_size: chips per forward pass (bounds memory on large batches).
        threads: torch intra-op threads for a call on the CPU (restored afterwards). One by default: face analysis
            runs one process per core (``workers="auto"``), and a second thread for a batch of a few faces gains
            little alone and loses much when the cores are busy with other work.
    """

    def __init__(
        self,
        model_path: str | Path,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        batch_size: int = 64,
        threads: int = 1,
    ):
        self.device = torch.device(device)
        self.dtype = dtype or (torch.float16 if self.device.type == "cuda" else torch.float32)
        self.batch_size = batch_size
        self.threads = threads
        network = load_dlib_resnet(model_path)
        if self.device.type != "cpu" or self.dtype != torch.float32:
            network = copy.deepcopy(network).to(device=self.device, dtype=self.dtype)
        self.network = network

    @torch.inference_mode()
    def __call__(self, chips: list[np.ndarray]) -> np.ndarray:
        """``[N, 128]`` float32 descriptors of ``N`` RGB uint8 chips."""
        if not chips:
            return np.zeros((0, self.network.fc.out_features), dtype=np.float32)
        stacked = torch.from_numpy(np.stack(chips))
        outputs = []
        with _intra_op_threads(self.threads if self.device.type == "cpu" else None):
            for start in range(0, len(chips), self.batch_size):
                batch = stacked[start : start + self.batch_size].to(self.device, non_blocking=True)
                outputs.append(self.network(batch).float().cpu())
        return torch.cat(outputs).numpy()


@contextmanager
def _intra_op_threads(threads: int | None) -> Iterator[None]:
    """torch's intra-op thread count set to ``threads`` (``None``: unchanged) inside the block."""
    previous = torch.get_num_threads()
    if threads is None or threads == previous:
        yield
        return
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
