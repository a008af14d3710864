"""Writes PyTorch checkpoint files without PyTorch, for tests that need full-size checkpoints.

The reader (cvtcl_jax/models/torch_checkpoint.py) is tested on small files that real PyTorch wrote
(tests/fixtures/torch_*.pt); checkpoints of a whole S3D are too large to commit, so tests write
them with this module in both of PyTorch's serialisations: what `torch.save` writes for NumPy
arrays turned into tensors (`torch._utils._rebuild_tensor_v2` over typed storages). PyTorch itself
loads these files (`weights_only=True`): tests/fixtures/make_torch_fixtures.py checks that once.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np

STORAGE_NAMES = {
    np.dtype(np.float32): "FloatStorage",
    np.dtype(np.float64): "DoubleStorage",
    np.dtype(np.float16): "HalfStorage",
    np.dtype(np.int64): "LongStorage",
    np.dtype(np.int32): "IntStorage",
    np.dtype(np.uint8): "ByteStorage",
    np.dtype(np.bool_): "BoolStorage",
}


class Global:
    """A name pickled as GLOBAL `module name`, without importing the module (torch is absent)."""

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name

    def __call__(self, *args):  # pickle's save_reduce requires a callable
        raise NotImplementedError


class _Storage:
    def __init__(self, key: str, array: np.ndarray):
        self.key, self.array = key, array


class _Pickler(pickle._Pickler):
    """Pickles NumPy arrays as PyTorch tensors over storages handed out by `persistent_id`."""

    dispatch = dict(pickle._Pickler.dispatch)

    def __init__(self, file, storages: dict[int, _Storage], legacy: bool):
        super().__init__(file, protocol=2)
        self.storages, self.legacy = storages, legacy

    def save_global_name(self, obj: Global):
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
        self.memoize(obj)

    dispatch[Global] = save_global_name

    def reducer_override(self, obj):
        if isinstance(obj, np.ndarray):
            base = obj if obj.base is None else obj.base
            storage = self.storages.setdefault(id(base), _Storage(str(len(self.storages)), base))
            if obj.base is None:
                offset, strides = 0, obj.strides
            else:  # a view of another array: the same storage, an offset and strides
                offset = (
                    obj.__array_interface__["data"][0] - base.__array_interface__["data"][0]
                ) // obj.itemsize
                strides = obj.strides
            stride = tuple(s // obj.itemsize for s in strides)
            args = (storage, offset, tuple(obj.shape), stride, False, collections.OrderedDict())
            return Global("torch._utils", "_rebuild_tensor_v2"), args
        return NotImplemented

    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            pid = ("storage", Global("torch", STORAGE_NAMES[obj.array.dtype]), obj.key, "cpu", obj.array.size)
            return (*pid, None) if self.legacy else pid  # the legacy format adds a view (none)
        return None


def _pickled(obj, legacy: bool) -> tuple[bytes, dict[int, _Storage]]:
    storages: dict[int, _Storage] = {}
    buf = io.BytesIO()
    _Pickler(buf, storages, legacy).dump(obj)
    return buf.getvalue(), storages


def save_zip(obj, path: str | Path, archive: str = "archive") -> None:
    """`torch.save(obj, path)` (zip format) with NumPy arrays as tensors."""
    data, storages = _pickled(obj, legacy=False)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr(f"{archive}/data.pkl", data)
        z.writestr(f"{archive}/byteorder", "little")
        for s in storages.values():
            z.writestr(f"{archive}/data/{s.key}", np.ascontiguousarray(s.array).tobytes())
        z.writestr(f"{archive}/version", "3\n")


def save_legacy(obj, path: str | Path) -> None:
    """`torch.save(obj, path, _use_new_zipfile_serialization=False)` with NumPy arrays as tensors."""
    data, storages = _pickled(obj, legacy=True)
    info = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}
    with Path(path).open("wb") as f:
        for header in (0x1950A86A20F9469CFC6C, 1001, info):
            pickle.dump(header, f, protocol=2)
        f.write(data)
        keys = sorted(s.key for s in storages.values())
        pickle.dump(keys, f, protocol=2)
        by_key = {s.key: s for s in storages.values()}
        for key in keys:
            array = np.ascontiguousarray(by_key[key].array)
            f.write(struct.pack("<q", array.size))
            f.write(array.tobytes())
