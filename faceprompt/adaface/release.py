"""Reading the authors' released ``.pt`` files without running anything in them.

The releases are ``torch.save`` pickles of whole modules (the authors' ``SubjBasisGenerator`` holding a transformers
4.x CLIP text model, its config and tokenizer, torch.nn layers). Loading them with ``torch.load(weights_only=False)``
would import those classes and let the pickle call any function it names. Here the pickle is read by an unpickler
whose ``find_class`` hands out:

- for the tensor machinery of ``torch.save`` (storages, ``_rebuild_tensor_v2``, ``_rebuild_parameter``, dtypes,
  ``OrderedDict``, ``set``): small local functions that only build tensors and containers;
- for classes of the module families a release is made of (the authors' ``adaface``/``ldm`` modules, transformers,
  torch.nn, einops, tokenizers, regex, ftfy): a :class:`PickledObject` stand-in that records its constructor
  arguments and state and never runs code;
- for anything else (``os.system``, ``builtins.eval``, ``subprocess.Popen``, ...): an
  :class:`~faceprompt.errors.UnsafeCheckpointError` naming the global, before it is called.

Tensors are read from the zip container the way ``torch.load`` does: the pickle names storages by key, and each
key's bytes are in ``<archive>/data/<key>``.
"""

from __future__ import annotations

import _compat_pickle
import io
import pickle
import zipfile
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, UnsafeCheckpointError

#: Module families whose classes (and the few functions their pickles name) become :class:`PickledObject`.
STAND_IN_FAMILIES = (
    "adaface.", "ldm.", "transformers.", "torch.nn.", "einops.", "tokenizers.", "regex.", "ftfy.",
)  # fmt: skip

_STORAGE_DTYPES = {
    "DoubleStorage": torch.float64, "FloatStorage": torch.float32, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}  # fmt: skip


class PickledObject:
    """A stand-in for an object of a class the reader will not import.

    Attributes:
        class_path: ``"module.Name"`` of the class (or function) the pickle named.
        args: positional arguments the pickle passed when creating the object.
        state: what the pickle passed to ``__setstate__`` (for modules and plain objects: their ``__dict__``).
    """

    class_path = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> PickledObject:  # both NEWOBJ and REDUCE come through here
        instance = super().__new__(cls)
        instance.args = args
        instance.state = kwargs or None
        return instance

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):  # (dict state, slot state)
            merged = dict(state[0] or {})
            merged.update(state[1])
            state = merged
        self.state = state

    def __repr__(self) -> str:
        return f"<pickled {self.class_path}>"

    # --- reading ----------------------------------------------------------------------------------------------

    def attr(self, name: str, default: Any = None) -> Any:
        """An attribute from the recorded state, or from the module's ``_parameters``/``_buffers``/``_modules``."""
        state = self.state if isinstance(self.state, dict) else {}
        if name in state:
            return state[name]
        for table in ("_parameters", "_buffers", "_modules"):
            entries = state.get(table)
            if isinstance(entries, dict) and name in entries:
                return entries[name]
        return default

    def child(self, path: str) -> Any:
        """A nested attribute, ``"a.b.c"``; ``None`` when a step is missing."""
        node: Any = self
        for part in path.split("."):
            if not isinstance(node, PickledObject):
                return None
            node = node.attr(part)
        return node

    def state_dict(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """The tensors ``nn.Module.state_dict`` would give: parameters and persistent buffers, recursively."""
        return dict(self._named_tensors(prefix))

    def _named_tensors(self, prefix: str) -> Iterator[tuple[str, torch.Tensor]]:
        state = self.state if isinstance(self.state, dict) else {}
        skipped = state.get("_non_persistent_buffers_set") or set()
        for table in ("_parameters", "_buffers"):
            for name, tensor in (state.get(table) or {}).items():
                if isinstance(tensor, torch.Tensor) and not (table == "_buffers" and name in skipped):
                    yield prefix + name, tensor
        for name, module in (state.get("_modules") or {}).items():
            if isinstance(module, PickledObject):
                yield from module._named_tensors(f"{prefix}{name}.")


class _Storage:
    """The dtype a storage class name stands for (what the pickle's persistent ids carry)."""

    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    if not isinstance(storage, torch.Tensor):
        raise CheckpointError("a tensor in the file does not refer to stored data")
    return torch.as_strided(storage, tuple(size), tuple(stride), int(storage_offset))


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    if not isinstance(data, torch.Tensor):
        raise CheckpointError("a parameter in the file does not hold a tensor")
    return data


def _rebuild_from_type_v2(func, new_type, args, state=None):
    """Tensors of a subclass or with attributes: only the data is kept (built by one of the functions above)."""
    if func not in (_rebuild_tensor_v2, _rebuild_parameter):
        raise CheckpointError("a tensor in the file is rebuilt by an unknown function")
    return func(*args)


def _ordered_dict(*args: Any) -> OrderedDict:
    return OrderedDict(*args)


def _encode(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode``: how protocol-2 pickles store ``bytes``."""
    if not isinstance(text, str) or encoding != "latin1":
        raise CheckpointError("unexpected encoded bytes in the file")
    return text.encode("latin1")


def _device(spec: Any, index: Any = None) -> str:
    return str(spec) if index is None else f"{spec}:{index}"


_SAFE_GLOBALS: dict[str, Any] = {
    "torch._utils._rebuild_tensor_v2": _rebuild_tensor_v2,
    "torch._utils._rebuild_parameter": _rebuild_parameter,
    "torch._utils._rebuild_parameter_with_state": _rebuild_parameter,
    "torch._tensor._rebuild_from_type_v2": _rebuild_from_type_v2,
    "torch._tensor.Tensor": "tensor",
    "torch.Tensor": "tensor",
    "collections.OrderedDict": _ordered_dict,
    "builtins.set": set,
    "builtins.frozenset": frozenset,
    "_codecs.encode": _encode,
    "torch.device": _device,
    "torch.Size": tuple,
    **{f"torch.{name}": _Storage(dtype) for name, dtype in _STORAGE_DTYPES.items()},
}


class _ReleaseUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str, source: str):
        super().__init__(io.BytesIO(data))
        self.archive = archive
        self.prefix = prefix
        self.source = source
        self.stand_ins: dict[str, type[PickledObject]] = {}
        self.storages: dict[str, torch.Tensor] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _compat_pickle.NAME_MAPPING:  # protocol-2 pickles use Python 2 names
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        path = f"{module}.{name}"
        if path in _SAFE_GLOBALS:
            return _SAFE_GLOBALS[path]
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if path.startswith(STAND_IN_FAMILIES):
            if path not in self.stand_ins:
                self.stand_ins[path] = type(name, (PickledObject,), {"class_path": path, "__module__": __name__})
            return self.stand_ins[path]
        raise UnsafeCheckpointError(
            f"{self.source}: the file asks for {path}, which an AdaFace release does not hold and which could run "
            "code, so the file was refused and nothing in it was run. Use the authors' released file, or a "
            "converted .safetensors"
        )

    def persistent_load(self, pid: Any) -> torch.Tensor:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _Storage)):
            raise CheckpointError(f"{self.source}: unknown stored-data reference {str(pid)[:60]!r}")
        _, storage_type, key, _location, numel = pid
        key = str(key)
        if key not in self.storages:
            try:
                raw = self.archive.read(f"{self.prefix}data/{key}")
            except KeyError:
                raise CheckpointError(f"{self.source}: the data of storage {key!r} is missing; the file is damaged") from None
            element = torch.empty(0, dtype=storage_type.dtype).element_size()
            if len(raw) != int(numel) * element:
                raise CheckpointError(f"{self.source}: storage {key!r} has {len(raw)} bytes, not {numel} values")
            self.storages[key] = torch.frombuffer(bytearray(raw), dtype=storage_type.dtype) if raw else torch.empty(
                0, dtype=storage_type.dtype
            )
        return self.storages[key]


def read_release(path: Path, source: str) -> Any:
    """The object a released ``.pt`` holds, with :class:`PickledObject` stand-ins for its modules.

    Raises:
        UnsafeCheckpointError: the pickle names a global outside the tensor machinery and the release's module
            families (nothing was called).
        CheckpointError: not a zip-format ``torch.save`` file, or a damaged one.
    """
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError):
        raise CheckpointError(
            f"{source}: not a PyTorch zip checkpoint (the released AdaFace files are); it may be truncated, an old "
            "pre-1.6 torch file or another kind of file"
        ) from None
    with archive:
        pickles = [name for name in archive.namelist() if name.endswith("/data.pkl") and name.count("/") == 1]
        if len(pickles) != 1:
            raise CheckpointError(f"{source}: a zip file without the one data.pkl of a torch checkpoint")
        prefix = pickles[0][: -len("data.pkl")]
        byteorder = archive.read(prefix + "byteorder").decode() if prefix + "byteorder" in archive.namelist() else "little"
        if byteorder != "little":
            raise CheckpointError(f"{source}: stored {byteorder}-endian; only little-endian files can be read")
        unpickler = _ReleaseUnpickler(archive.read(pickles[0]), archive, prefix, source)
        try:
            return unpickler.load()
        except (UnsafeCheckpointError, CheckpointError):
            raise
        except Exception as error:  # a damaged pickle raises many types; the user needs one message
            raise CheckpointError(
                f"{source}: the pickle could not be read ({type(error).__name__}: {str(error)[:120]}); the file is "
                "damaged or not an AdaFace release"
            ) from None
