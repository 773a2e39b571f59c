"""Read a Keras 3 `.keras` file (a zip of `config.json` + `model.weights.h5`) for
`mpq.saving.load`: its config as mpq takes it, and its weights in mpq's layouts.

Nothing from the file runs: the config is JSON translated as data (`mpq.layers.keras_config`),
names resolve through mpq's catalogs, the HDF5 file is read with h5py (datasets of numbers
only; links to other files, external storage and non-numeric data are refused), and every
size is checked against the model built on the meta device before anything is allocated.
Needs h5py (`pip install mpq[keras]`).
"""

from __future__ import annotations

import io
import os
import zipfile
import zlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from mpq._errors import MAX_CONFIG_DEPTH

__all__ = ["KerasArchive", "is_keras_file", "read_keras"]

# Entries of a .keras zip, and the most any of them may inflate to.
_CONFIG = "config.json"
_WEIGHTS = "model.weights.h5"
_METADATA = "metadata.json"
MAX_CONFIG_BYTES = 64 * 2**20
# The weights file may exceed the tensors it holds by HDF5's own structures: this much, plus
# 1/16 of the tensor bytes (chunk indexes), and no more.
_H5_OVERHEAD = 2**20
# A zip entry that inflates more than this (uncompressed / compressed) is refused as a bomb;
# real weights (random-looking floats) compress by well under 2x.
MAX_COMPRESSION_RATIO = 200

_KERAS_DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "float64": torch.float64,
    "int8": torch.int8,
    "int32": torch.int32,
    "uint8": torch.uint8,
}


def is_keras_file(path: str | os.PathLike[str]) -> bool:
    """True when `path` starts like a zip archive (Keras' `.keras` format: a local file header,
    `PK\\x03\\x04`) rather than a safetensors file (an 8-byte header length, then JSON)."""
    with open(os.fspath(path), "rb") as f:
        return f.read(4) == b"PK\x03\x04"


class KerasArchive:
    """The config and the weight datasets of an open `.keras` file (see `read_keras`)."""

    def __init__(self, path: str, weights: bytes):
        self.path = path
        self._weights = weights

    def datasets(self) -> dict[str, tuple[tuple[int, ...], np.dtype[Any], Any]]:
        """`"layers/dense/vars/0"` -> (shape, dtype, h5py dataset) for every dataset, checked:
        hard links only, no external storage, numeric dtypes only. Valid while `open()`."""
        return self._datasets

    def __enter__(self) -> KerasArchive:
        import h5py

        try:
            self._h5 = h5py.File(io.BytesIO(self._weights), "r")
        except (OSError, ValueError) as e:
            raise ValueError(
                f"Could not read {_WEIGHTS} in {self.path!r} as HDF5: it is truncated or "
                f"corrupted. Received error: {e}"
            ) from e
        try:
            self._datasets = dict(_walk(self._h5, self.path))
        except (OSError, KeyError, RuntimeError) as e:
            self._h5.close()
            raise ValueError(
                f"Could not read {_WEIGHTS} in {self.path!r}: it is corrupted. Received error: {e}"
            ) from e
        except BaseException:
            self._h5.close()
            raise
        return self

    def read(self, name: str) -> np.ndarray[Any, Any]:
        """The values of dataset `name` (its size was checked by the caller)."""
        try:
            value: np.ndarray[Any, Any] = np.array(self._datasets[name][2][()], order="C")
        except (OSError, KeyError, RuntimeError) as e:
            raise ValueError(
                f"Could not read {name!r} from {_WEIGHTS} in {self.path!r}: it is corrupted. "
                f"Received error: {e}"
            ) from e
        return value

    def __exit__(self, *exc: object) -> None:
        self._h5.close()


def _walk(
    group: Any, path: str
) -> Iterator[tuple[str, tuple[tuple[int, ...], np.dtype[Any], Any]]]:
    import h5py

    stack = [("", group)]
    while stack:
        prefix, g = stack.pop()
        for key in g:
            link = g.get(key, getlink=True)
            name = f"{prefix}{key}"
            if not isinstance(link, h5py.HardLink):
                raise ValueError(
                    f"Expected only hard links in {_WEIGHTS} of {path!r} (nothing outside the "
                    f"file is read). Received: a {type(link).__name__} at {name!r}"
                )
            obj = g[key]
            if isinstance(obj, h5py.Group):
                if name.count("/") >= MAX_CONFIG_DEPTH:
                    raise ValueError(
                        f"Expected groups nested at most {MAX_CONFIG_DEPTH} deep in {path!r}."
                    )
                stack.append((f"{name}/", obj))
                continue
            if not isinstance(obj, h5py.Dataset) or obj.external:
                raise ValueError(
                    f"Expected datasets stored inside {_WEIGHTS} of {path!r}. "
                    f"Received: {type(obj).__name__} with external storage at {name!r}"
                )
            dtype = obj.dtype
            if dtype.kind not in "fiub" or dtype.str.lstrip("<>|=") not in _NUMPY_OK:
                raise ValueError(
                    f"Expected numeric datasets in {path!r}. Received: dtype {dtype} at {name!r}"
                )
            yield name, (tuple(int(d) for d in obj.shape), dtype, obj)


_NUMPY_OK = {"f4", "f2", "f8", "i1", "i4", "u1", "i8", "b1"}


def read_keras(path: str | os.PathLike[str]) -> tuple[str, zipfile.ZipFile]:
    """The text of `config.json` in the `.keras` file at `path`, and the open zip. Checks the
    zip's entries (names, inflated sizes and ratios) first."""
    path = os.fspath(path)
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise ValueError(
            f"Could not read {path!r} as a .keras (zip) file. Received error: {e}"
        ) from e
    names = {info.filename: info for info in archive.infolist()}
    for required in (_CONFIG, _WEIGHTS):
        if required not in names:
            archive.close()
            raise ValueError(
                f"Expected a .keras file with {_CONFIG} and {_WEIGHTS}. Received: entries "
                f"{sorted(names)[:20]} in {path!r}"
            )
    for info in names.values():
        ratio = info.file_size / max(info.compress_size, 1)
        if ratio > MAX_COMPRESSION_RATIO and info.file_size > 2**20:
            archive.close()
            raise ValueError(
                f"Expected zip entries that inflate at most {MAX_COMPRESSION_RATIO}x. Received: "
                f"{info.filename!r} inflates {ratio:.0f}x ({info.file_size} bytes) in {path!r}"
            )
    if names[_CONFIG].file_size > MAX_CONFIG_BYTES:
        archive.close()
        raise ValueError(
            f"Expected {_CONFIG} of at most {MAX_CONFIG_BYTES} bytes. Received: "
            f"{names[_CONFIG].file_size} bytes in {path!r}"
        )
    try:
        text = _read_entry(archive, _CONFIG, MAX_CONFIG_BYTES, path).decode("utf-8")
    except (UnicodeDecodeError, ValueError) as e:
        archive.close()
        raise ValueError(f"The {_CONFIG} in {path!r} is not valid UTF-8 JSON.") from e
    return text, archive


def _read_entry(archive: zipfile.ZipFile, name: str, limit: int, path: str) -> bytes:
    """Read at most `limit` bytes of entry `name` (the header's size is not trusted)."""
    try:
        with archive.open(name) as f:
            data = f.read(limit + 1)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, zlib.error) as e:
        raise ValueError(f"Could not read {name!r} in {path!r}: the zip is damaged. {e}") from e
    if len(data) > limit:
        raise ValueError(f"Expected {name!r} of at most {limit} bytes in {path!r}.")
    return data


def open_weights(archive: zipfile.ZipFile, path: str, expected_bytes: int) -> KerasArchive:
    """The weights entry, after checking its size against `expected_bytes` (what the model
    built from the config holds) plus HDF5's overhead."""
    limit = expected_bytes + expected_bytes // 16 + _H5_OVERHEAD
    size = archive.getinfo(_WEIGHTS).file_size
    if size > limit:
        raise ValueError(
            f"Expected {_WEIGHTS} of at most {limit} bytes for the model its config describes. "
            f"Received: {size} bytes in {path!r}"
        )
    return KerasArchive(path, _read_entry(archive, _WEIGHTS, limit, path))


# ------------------------------------------------------------------------- weight layouts
# What Keras 3.15 writes per layer, in order (`save_own_variables`): names as mpq calls them.
_FLOAT_VARS: dict[str, tuple[str, ...]] = {
    "Dense": ("kernel", "bias"),
    "EinsumDense": ("kernel", "bias"),
    "Conv1D": ("kernel", "bias"),
    "Conv2D": ("kernel", "bias"),
    "Embedding": ("embeddings",),
    "LayerNormalization": ("gamma", "beta"),
    "RMSNormalization": ("gamma",),  # Keras' `scale`
    "BatchNormalization": (
        "gamma",
        "beta",
        "moving_mean",
        "moving_variance",
        "moving_stddev",
        "renorm_mean",
        "renorm_stddev",
    ),
}
_QUANTIZED_VARS: dict[str, tuple[str, ...]] = {
    "int8": ("kernel", "bias", "kernel_scale"),
    "float8": (
        "kernel",
        "bias",
        "inputs_scale",
        "inputs_amax_history",
        "kernel_scale",
        "kernel_amax_history",
        "outputs_grad_scale",
        "outputs_grad_amax_history",
    ),
}
_EMBEDDING_QUANTIZED_VARS: dict[str, tuple[str, ...]] = {
    "int8": ("embeddings", "embeddings_scale"),
}


def keras_layer_paths(model: Any) -> Iterator[tuple[str, Any]]:
    """(`h5 group`, layer) for `model` and every nested layer, named as Keras 3.15 names them
    (`layers/<snake_case class>[_<n>]`, counted per container)."""
    from mpq.layers import Sequential
    from mpq.layers.functional import Functional
    from mpq.layers.tracking import to_snake_case

    stack: list[tuple[str, Any]] = [("", model)]
    while stack:
        prefix, layer = stack.pop()
        yield prefix, layer
        if isinstance(layer, (Sequential, Functional)):
            used: dict[str, int] = {}
            children = []
            for child in layer.layers:
                base = to_snake_case(type(child).__name__)
                n = used.get(base, 0)
                used[base] = n + 1
                name = base if n == 0 else f"{base}_{n}"
                children.append((f"{prefix}layers/{name}/", child))
            stack.extend(reversed(children))


class KerasVar:
    """One dataset Keras writes for a layer: the mpq variable it fills (None: Keras-only, e.g.
    int4's `g_idx`, checked and dropped), and how many elements of which size it must hold."""

    __slots__ = ("itemsize", "mpq_name", "numel")

    def __init__(self, mpq_name: str | None, numel: int, itemsize: int):
        self.mpq_name, self.numel, self.itemsize = mpq_name, numel, itemsize


def keras_vars(layer: Any) -> list[KerasVar]:
    """The datasets Keras 3.15 writes for `layer`, in order; ValueError for a layer or mode
    whose Keras layout mpq cannot read. LoRA factors are not among them (`lora_vars`)."""
    own = dict(layer._own_variables())
    for name in lora_vars(layer):
        own.pop(name, None)
    mode = layer.dtype_policy.quantization_mode
    cls = type(layer).__name__
    if mode is None:
        order = _FLOAT_VARS.get(cls, ())
    elif cls == "Embedding":
        order = _EMBEDDING_QUANTIZED_VARS.get(mode, ())
    elif cls in ("Dense", "EinsumDense"):
        order = _QUANTIZED_VARS.get(mode, ())
        if mode == "int4" and cls == "Dense":
            order = ("kernel", "bias", "kernel_scale", "kernel_zero")
    else:
        order = ()
    names = [n for n in order if n in own]
    if sorted(names) != sorted(own):
        raise ValueError(
            "Expected a layer whose Keras weights mpq can read (Dense, EinsumDense, Conv1D, "
            "Conv2D, Embedding, LayerNormalization, RMSNormalization, BatchNormalization; "
            "quantized: int8 and "
            "float8 Dense/EinsumDense, int8 Embedding, int4 Dense). Received: "
            f"{cls} {layer.name!r} with policy {layer.dtype_policy.name!r} and variables "
            f"{sorted(own)}"
        )
    out = [KerasVar(n, own[n].numel(), own[n].element_size()) for n in names]
    if mode == "int4":  # Keras packs [in, ceil(out / 2)]; groups carry g_idx [in] float32
        k, n = _int4_dims(layer)
        out[0] = KerasVar("kernel", k * ((n + 1) // 2), 1)
        if layer.dtype_policy.block_size != -1:
            out.append(KerasVar(None, k, 4))
    return out


def lora_vars(layer: Any) -> tuple[str, ...]:
    """The LoRA factors of `layer` (none without LoRA). Keras 3.15 saves a LoRA layer with the
    update merged into its kernel / table (requantized when quantized) and no factors, and
    its `load_own_variables` sets both factors to zeros: a loaded file gives the same outputs,
    and the factors are set to zeros here too."""
    if not getattr(layer, "lora_enabled", False):
        return ()
    names: tuple[str, ...] = layer._lora_names()
    return names


def _int4_dims(layer: Any) -> tuple[int, int]:
    """(input_dim, units) of an int4 Dense."""
    shape = layer.get_build_config()["input_shape"]
    return int(shape[-1]), int(layer.units)


def convert(
    layer: Any, name: str, array: np.ndarray[Any, Any], target: torch.Tensor
) -> torch.Tensor:
    """Keras' stored value -> mpq's tensor for variable `name` of `layer`: the same bits where
    the layouts agree; int8: the kernel permuted to mpq's layout and the scale inverted (Keras
    stores `1 / scale`); int4: the codes unpacked from Keras' [in, out/2] and packed in mpq's
    [out, in/2], the per-channel scale inverted, grouped scales and zero points as they are
    (both compute `(q - zero) * scale`). ValueError when the result does not fit `target`."""
    t = torch.from_numpy(array)
    mode = layer.dtype_policy.quantization_mode
    if mode == "int8" and name == "kernel":
        from mpq.quantization._forms import form_of

        t = form_of(layer, tuple(t.shape)).to_stored(t).contiguous()
    elif mode == "int8" and name.endswith("_scale"):
        t = (1.0 / t.to(torch.float32)).reshape(target.shape)
    elif mode == "int4" and name == "kernel":
        from mpq.quantizers import pack_int4, unpack_int4

        k, n = _int4_dims(layer)
        codes = unpack_int4(t.reshape(k, (n + 1) // 2), axis=-1, size=n)  # [in, out]
        t = pack_int4(codes.t().contiguous(), axis=-1)
    elif mode == "int4" and name == "kernel_scale" and layer.dtype_policy.block_size == -1:
        t = 1.0 / t.to(torch.float32)
    if tuple(t.shape) != tuple(target.shape):
        t = t.reshape(target.shape) if t.numel() == target.numel() else t
    if tuple(t.shape) != tuple(target.shape):
        raise ValueError(
            f"Expected Keras' {name!r} of {layer.name!r} to fit mpq's {tuple(target.shape)}. "
            f"Received: shape {tuple(array.shape)}"
        )
    return t.to(target.dtype) if t.dtype != target.dtype else t


def check_g_idx(layer: Any, array: np.ndarray[Any, Any]) -> None:
    """Keras' `g_idx` must be the contiguous groups mpq stores (`i // block_size`)."""
    k, _ = _int4_dims(layer)
    expected = np.arange(k) // layer.dtype_policy.block_size
    if array.shape != (k,) or not np.array_equal(array, expected):
        raise ValueError(
            f"Expected the int4 group index g_idx of {layer.name!r} to be arange({k}) // "
            f"{layer.dtype_policy.block_size} (contiguous groups; mpq has no reordered groups). "
            f"Received: {array[:8].tolist()}..."
        )
