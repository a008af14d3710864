"""Reading PyTorch checkpoint files with the standard library and NumPy, running none of their code.

`load_torch_file(path)` reads both of PyTorch's serialisations into plain Python containers with
NumPy arrays where the file holds tensors:
  - the zip format (PyTorch >= 1.6): `<archive>/data.pkl` plus one `<archive>/data/<key>` file per
    storage;
  - the legacy format (PyTorch <= 1.5, and `torch.save(..., _use_new_zipfile_serialization=False)`,
    e.g. CoCLR's released `.pth.tar` files): five pickles in a row (magic number, protocol
    version, system info, the object, the storage keys), then each storage as an int64 element
    count and its raw bytes.

Both are pickles, and checkpoints come from strangers, so the unpickler resolves only the globals
those files need (tensor rebuilding, storage types, dtypes, `OrderedDict`, `torch.Size`, bytes),
as PyTorch's own `weights_only` loading does, each to a function of this module. Any other global
(say `os.system`) raises `TorchFileError` naming it when the pickle first mentions it, before it
is imported or called. Tensors sharing a storage become separate arrays with the same values;
views keep their offsets and strides.
"""

from __future__ import annotations

import _compat_pickle
import collections
import io
import pickle
import struct
import zipfile
from pathlib import Path

import ml_dtypes
import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

# Storage classes (by their legacy names) and dtypes (torch.<name>) -> NumPy dtypes.
STORAGE_DTYPES = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
    "ComplexFloatStorage": np.complex64,
    "ComplexDoubleStorage": np.complex128,
}
TORCH_DTYPES = {
    "float64": np.float64,
    "double": np.float64,
    "float32": np.float32,
    "float": np.float32,
    "float16": np.float16,
    "half": np.float16,
    "bfloat16": ml_dtypes.bfloat16,
    "int64": np.int64,
    "long": np.int64,
    "int32": np.int32,
    "int": np.int32,
    "int16": np.int16,
    "short": np.int16,
    "int8": np.int8,
    "uint8": np.uint8,
    "bool": np.bool_,
    "complex64": np.complex64,
    "complex128": np.complex128,
}


class TorchFileError(ValueError):
    """The file is not a PyTorch checkpoint this reader accepts; the message says why."""


class _StorageType:
    """A storage class named in a pickle (torch.FloatStorage, ...): only its dtype matters."""

    def __init__(self, name: str):
        self.name, self.dtype = name, np.dtype(STORAGE_DTYPES[name])


class _Dtype:
    """A torch dtype named in a pickle (torch.float32, ...)."""

    def __init__(self, name: str):
        self.name, self.dtype = name, np.dtype(TORCH_DTYPES[name])


def _storage_dtype(storage_type) -> np.dtype:
    if isinstance(storage_type, _StorageType | _Dtype):
        return storage_type.dtype
    raise TorchFileError(f"a storage of type {storage_type!r}: not a tensor storage this reader knows")


def _rebuild_tensor(storage: np.ndarray, offset: int, size, stride) -> np.ndarray:
    """The tensor (size, stride, in elements) at `offset` elements into `storage` (1-d), copied."""
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    if len(size) != len(stride):
        raise TorchFileError(f"a tensor of size {size} with strides {stride}")
    if any(n == 0 for n in size):
        return np.zeros(size, storage.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
    if offset < 0 or min(stride, default=0) < 0 or last >= storage.size:
        raise TorchFileError(
            f"a tensor of size {size}, strides {stride} at offset {offset} reaches past its storage "
            f"of {storage.size} elements: the file is damaged"
        )
    item = storage.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage[offset:], shape=size, strides=tuple(s * item for s in stride), writeable=False
    )
    return np.array(view)


class _LazyStorage:
    """A legacy-format storage: its bytes follow the object's pickle in the file."""

    def __init__(self, key: str, dtype: np.dtype):
        self.key, self.dtype = key, dtype


class _LazyTensor:
    """A legacy-format tensor, built once its storage has been read (`_resolve`)."""

    def __init__(self, storage: _LazyStorage, dtype, offset, size, stride):
        self.storage, self.dtype, self.args = storage, dtype, (offset, size, stride)

    def build(self, data: dict[str, np.ndarray]) -> np.ndarray:
        if self.storage.key not in data:
            raise TorchFileError(f"storage {self.storage.key} is not among the file's storages: damaged file")
        return _rebuild_tensor(data[self.storage.key].view(self.dtype), *self.args)


def _tensor(storage, offset, size, stride, dtype=None):
    dtype = dtype or storage.dtype
    if isinstance(storage, _LazyStorage):
        return _LazyTensor(storage, dtype, offset, size, stride)
    return _rebuild_tensor(storage.view(dtype), offset, size, stride)


def _rebuild_tensor_v1(storage, offset, size, stride):
    return _tensor(storage, offset, size, stride)


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None):
    return _tensor(storage, offset, size, stride)


def _rebuild_tensor_v3(storage, offset, size, stride, requires_grad, hooks, dtype, metadata=None):
    return _tensor(storage, offset, size, stride, _storage_dtype(dtype))


def _rebuild_parameter(data, requires_grad=False, hooks=None, state=None):
    return data


def _rebuild_from_type_v2(func, new_type, args, state):
    if new_type not in (_TENSOR, _PARAMETER):
        raise TorchFileError(f"a tensor of subclass {new_type!r}: only plain tensors are read")
    return func(*args)


def _size(*args):
    return tuple(*args)


def _device(*args):
    return str(args[0]) if args else "cpu"


def _codecs_encode(text, encoding="latin1"):
    """Protocol-2 pickles store bytes as _codecs.encode(str, 'latin1')."""
    if not isinstance(text, str) or encoding != "latin1":
        raise TorchFileError(f"_codecs.encode({type(text).__name__}, {encoding!r}): only bytes are read")
    return text.encode("latin1")


def _refuse(what: str):
    def refuse(*args, **kwargs):
        raise TorchFileError(f"the file holds {what}, which this reader does not read")

    return refuse


_TENSOR, _PARAMETER = object(), object()

_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("collections", "Counter"): collections.Counter,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "bytearray"): bytearray,
    ("builtins", "complex"): complex,
    ("_codecs", "encode"): _codecs_encode,
    ("torch", "Size"): _size,
    ("torch", "device"): _device,
    ("torch", "Tensor"): _TENSOR,
    ("torch.nn.parameter", "Parameter"): _PARAMETER,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor_v1,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch._utils", "_rebuild_qtensor"): _refuse("a quantized tensor"),
    ("torch._utils", "_rebuild_sparse_tensor"): _refuse("a sparse tensor"),
    ("torch.serialization", "_get_layout"): _refuse("a tensor of a non-strided layout"),
    **{("torch", name): _StorageType(name) for name in STORAGE_DTYPES},
    **{("torch", name): _Dtype(name) for name in TORCH_DTYPES},
}


class _Unpickler(pickle.Unpickler):
    """Resolves only `_ALLOWED` globals; `load_storage(pid)` supplies the persistent storages."""

    def __init__(self, file, load_storage):
        super().__init__(file, encoding="utf-8")
        self._load_storage = load_storage

    def find_class(self, module, name):
        # Protocol-2 pickles (PyTorch's default) spell some globals by their Python 2 names.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise TorchFileError(
                f"the checkpoint's pickle calls or names {module}.{name}, which is not part of a "
                "checkpoint of tensors; refused without importing or calling it (a checkpoint that "
                "runs code is unsafe to load: ask its author for a plain state dict)"
            ) from None

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise TorchFileError(f"an unknown persistent object {pid!r}: not a PyTorch checkpoint")
        return self._load_storage(pid[1:])


def _unpickle(data: bytes | io.BufferedIOBase, load_storage=None):
    def no_storage(pid):
        raise TorchFileError("a tensor where the file's header should be: not a PyTorch checkpoint")

    file = io.BytesIO(data) if isinstance(data, bytes) else data
    try:
        return _Unpickler(file, load_storage or no_storage).load()
    except TorchFileError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError) as e:
        raise TorchFileError(
            f"the pickle cannot be read ({type(e).__name__}: {e}): the file is damaged"
        ) from e


def _read_zip(path: Path):
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise TorchFileError(f"{path} is a zip file without PyTorch's <archive>/data.pkl")
        root = pickles[0][: -len("data.pkl")]
        storages: dict[str, np.ndarray] = {}

        def load_storage(pid):
            storage_type, key, _location, numel = pid[:4]
            dtype = _storage_dtype(storage_type)
            if key not in storages:
                member = f"{root}data/{key}"
                if member not in names:
                    raise TorchFileError(f"{path} lacks the storage {member}: the file is damaged")
                raw = archive.read(member)
                count = len(raw) // dtype.itemsize
                if count < numel:
                    raise TorchFileError(f"{path}: storage {member} holds {count} of {numel} elements")
                storages[key] = np.frombuffer(raw, dtype, count)
            return storages[key].view(dtype) if storages[key].dtype != dtype else storages[key]

        byteorder = root + "byteorder"
        if byteorder in names and archive.read(byteorder).strip() not in (b"little", b""):
            raise TorchFileError(
                f"{path} was written on a big-endian machine; re-save it on a little-endian one"
            )
        return _unpickle(archive.read(pickles[0]), load_storage)


def _read_legacy(path: Path):
    with path.open("rb") as f:
        try:
            magic = _unpickle(f)
        except TorchFileError as e:
            raise TorchFileError(f"{path} is neither a zip nor a legacy PyTorch checkpoint: {e}") from e
        if magic != LEGACY_MAGIC:
            raise TorchFileError(f"{path} is not a PyTorch checkpoint (no PyTorch magic number)")
        protocol = _unpickle(f)
        if protocol != LEGACY_PROTOCOL:
            raise TorchFileError(
                f"{path}: legacy serialisation protocol {protocol}, expected {LEGACY_PROTOCOL}"
            )
        info = _unpickle(f)
        if isinstance(info, dict) and not info.get("little_endian", True):
            raise TorchFileError(
                f"{path} was written on a big-endian machine; re-save it on a little-endian one"
            )
        # The storages' bytes follow the object: its tensors are built once they are read.
        storages: dict[str, _LazyStorage] = {}

        def load_storage(pid):
            storage_type, key, _location, numel = pid[:4]
            if len(pid) > 4 and pid[4] is not None:
                raise TorchFileError(f"{path}: storage views (files of PyTorch < 1.0) are not read")
            storages.setdefault(key, _LazyStorage(key, _storage_dtype(storage_type)))
            storages[key].numel = int(numel)
            return storages[key]

        obj = _unpickle(f, load_storage)
        keys = _unpickle(f)
        data: dict[str, np.ndarray] = {}
        for key in keys:
            if key not in storages:
                raise TorchFileError(f"{path} lists storage {key!r} that no tensor uses: the file is damaged")
            dtype, numel = storages[key].dtype, storages[key].numel
            header = f.read(8)
            if len(header) < 8:
                raise TorchFileError(f"{path} ends before storage {key}: the file is truncated")
            (count,) = struct.unpack("<q", header)
            raw = f.read(count * dtype.itemsize)
            if len(raw) < count * dtype.itemsize or count < numel:
                raise TorchFileError(f"{path} ends inside storage {key}: the file is truncated")
            data[key] = np.frombuffer(raw, dtype, count)
    return _resolve(obj, data)


def _resolve(obj, data: dict[str, np.ndarray]):
    """Legacy format: `obj` with its tensors built from the storages read after it."""
    if isinstance(obj, _LazyTensor):
        return obj.build(data)
    if isinstance(obj, dict):
        return type(obj)((k, _resolve(v, data)) for k, v in obj.items())
    if isinstance(obj, list | tuple):
        return type(obj)(_resolve(v, data) for v in obj)
    return obj


def load_torch_file(path: str | Path):
    """The object a PyTorch checkpoint file holds, tensors as NumPy arrays (see the module doc).

    Raises TorchFileError naming the problem: not a PyTorch file, damaged or truncated, or a
    pickle that names anything but tensors and plain containers.
    """
    path = Path(path)
    if not path.is_file():
        raise TorchFileError(f"{path} does not exist")
    if zipfile.is_zipfile(path):
        try:
            return _read_zip(path)
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            raise TorchFileError(f"{path} is a damaged zip file ({e})") from e
    return _read_legacy(path)
