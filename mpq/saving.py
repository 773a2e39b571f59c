"""Save and load a layer or model as ONE safetensors file: JSON config + every weight, bit-exact.

``save(model, path)`` / ``load(path)`` rebuild the model from its config; ``load_weights`` fills
an existing model. Damaged or mismatching files raise ValueError before anything is written.
Loading runs no code from the file: names resolve from mpq's catalogs and from objects
registered with ``register_serializable`` or passed in ``custom_objects``; nothing is imported
or unpickled, and sizes and nesting are checked before anything is allocated.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
from typing import TYPE_CHECKING, Any

import torch

from mpq import saving_keras
from mpq._errors import LOAD_ERRORS, MAX_CONFIG_DEPTH
from mpq._registry import custom_object_scope, register_serializable

if TYPE_CHECKING:
    from mpq.layers.base import Layer

__all__ = [
    "LOAD_ERRORS",
    "MAX_CONFIG_DEPTH",
    "custom_object_scope",
    "deserialize",
    "load",
    "load_weights",
    "register_serializable",
    "save",
]

FORMAT = "mpq.saving/1"
# The config of a file saved from a torch module holding mpq layers (weights only).
TORCH_MODULE = "torch.nn.Module"


def _collect(model: torch.nn.Module) -> dict[str, tuple[torch.nn.Module, str, torch.Tensor]]:
    """``"<module path>/<variable name>"`` -> (owning module, local name, tensor), for every
    module's own variables (Layers: by variable name) and persistent buffers."""
    from mpq.layers.base import Layer

    out: dict[str, tuple[torch.nn.Module, str, torch.Tensor]] = {}
    for prefix, module in model.named_modules():
        if isinstance(module, Layer):
            own = dict(module._own_variables())
        else:
            own = {k: p for k, p in module._parameters.items() if p is not None}
        for k, b in module._buffers.items():
            if b is not None and k not in module._non_persistent_buffers_set:
                own[f"buffer:{k}"] = b
        for name, tensor in own.items():
            out[f"{prefix}/{name}" if prefix else name] = (module, name, tensor)
    return out


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key]
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save(model: torch.nn.Module, path: str | os.PathLike[str]) -> None:
    """Write ``model`` (an ``mpq.layers.Layer``, e.g. a Sequential) to ``path``.

    A torch module holding mpq layers (``mpq.from_torch``) is saved too, weights only: fill a
    freshly converted (and equally quantized) copy with :func:`load_weights`.

    The file is a safetensors file whose metadata holds the serialized config (with build
    config), a format tag and a SHA-256 of all tensors. The write is atomic (temp + rename).

    >>> import tempfile
    >>> from mpq.layers import Dense
    >>> model = Dense(2)
    >>> model.build((None, 3))
    >>> path = os.path.join(tempfile.mkdtemp(), "dense.safetensors")
    >>> save(model, path)
    >>> torch.equal(load(path).kernel, model.kernel)
    True
    """
    from safetensors.torch import save_file

    from mpq.layers import serialization
    from mpq.layers.base import Layer

    if isinstance(model, Layer):
        config = serialization.serialize(model)
    elif isinstance(model, torch.nn.Module) and any(isinstance(m, Layer) for m in model.modules()):
        # A torch model holding mpq layers (mpq.from_torch): weights only; its code is the
        # user's, so `load` cannot rebuild it (load_weights fills a freshly converted copy).
        config = {"class_name": TORCH_MODULE, "module": type(model).__name__}
    else:
        raise TypeError(
            "Expected an mpq.layers.Layer, or a torch.nn.Module holding mpq layers (see "
            f"mpq.from_torch), to save. Received: {model!r} (of type {type(model).__name__})"
        )
    tensors = {
        key: t.detach().to("cpu", copy=True).contiguous()
        for key, (_, _, t) in _collect(model).items()
    }
    metadata = {
        "format": FORMAT,
        "config": json.dumps(config),
        "sha256": _digest(tensors),
    }
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".mpq-save-", dir=directory)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _read(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    from safetensors import SafetensorError, safe_open

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No mpq file at {path!r}.")
    try:
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ValueError(
            f"Could not read {path!r} as an mpq file: it is truncated, corrupted or not a "
            f"safetensors file. Received error: {e}"
        ) from e
    if metadata.get("format") != FORMAT:
        raise ValueError(
            f"Expected an mpq file with format {FORMAT!r}. Received: "
            f"format={metadata.get('format')!r} in {path!r}"
        )
    if _digest(tensors) != metadata.get("sha256"):
        raise ValueError(
            f"The weights in {path!r} do not match their checksum: the file is corrupted."
        )
    text = metadata.get("config")
    if not isinstance(text, str):
        raise ValueError(f"The config stored in {path!r} is missing or not valid JSON.")
    _check_json_depth(text, path)
    try:
        config = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"The config stored in {path!r} is missing or not valid JSON.") from e
    return config, tensors


_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_JSON_BRACKET = re.compile(r"[\[\]{}]")


def _check_json_depth(text: str, path: str) -> None:
    """Raise ValueError if arrays and objects nest deeper than ``MAX_CONFIG_DEPTH`` in the JSON
    ``text``. Python's JSON parser recurses, so this runs on the text, before parsing."""
    depth = 0
    for bracket in _JSON_BRACKET.finditer(_JSON_STRING.sub('""', text)):
        depth += 1 if bracket[0] in "[{" else -1
        if depth > MAX_CONFIG_DEPTH:
            raise ValueError(
                f"Expected a config nested at most {MAX_CONFIG_DEPTH} levels deep. Received: "
                f"a config nested more than {MAX_CONFIG_DEPTH} levels deep in {path!r}"
            )


def _check_match(
    model: torch.nn.Module, tensors: dict[str, torch.Tensor], path: str
) -> dict[str, tuple[torch.nn.Module, str, torch.Tensor]]:
    """Raise ValueError unless the file's tensors are exactly the model's variables (names,
    shapes, dtypes). The model may live on the meta device."""
    expected = _collect(model)
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise ValueError(
            f"The weights in {path!r} do not match the model: missing {missing}, "
            f"unexpected {extra}."
        )
    problems = [
        f"{key}: model {tuple(t.shape)} {t.dtype}, file {tuple(tensors[key].shape)} "
        f"{tensors[key].dtype}"
        for key, (_, _, t) in expected.items()
        if tuple(t.shape) != tuple(tensors[key].shape) or t.dtype != tensors[key].dtype
    ]
    if problems:
        raise ValueError(f"The weights in {path!r} do not match the model: {problems}")
    return expected


def _check_and_assign(model: torch.nn.Module, tensors: dict[str, torch.Tensor], path: str) -> None:
    """Validate every tensor against the model, then write them all (nothing half-loaded)."""
    from mpq.layers.base import Layer
    from mpq.layers.variables import check_write

    expected = _check_match(model, tensors, path)
    for key, (_, _, t) in expected.items():  # value rules (codes, scales) before any write
        check_write(t, tensors[key], f"load {key!r} from {path!r} into")
    by_module: dict[int, tuple[torch.nn.Module, dict[str, torch.Tensor]]] = {}
    for key, (module, name, _) in expected.items():
        by_module.setdefault(id(module), (module, {}))[1][name] = tensors[key]
    with torch.no_grad():
        for module, store in by_module.values():
            variables = {k: v for k, v in store.items() if not k.startswith("buffer:")}
            if isinstance(module, Layer) and variables:
                module.load_own_variables(variables)
            elif variables:
                for k, v in variables.items():
                    module.get_parameter(k).copy_(v)
            for k, v in store.items():
                if k.startswith("buffer:"):
                    module.get_buffer(k.removeprefix("buffer:")).copy_(v)


def load(path: str | os.PathLike[str], custom_objects: dict[str, Any] | None = None) -> Layer:
    """Rebuild the model saved at ``path`` (config -> layers -> build -> weights).

    Names in the config resolve from mpq's catalogs, from objects registered with
    ``register_serializable`` (or ``mpq.layers.register_layer``) and from ``custom_objects``
    (name -> class or function); nothing is imported or unpickled. The model is first built on
    the meta device and its variables compared with the file's tensors, so a config that does
    not match them fails before anything is allocated.

    Raises FileNotFoundError, or one of ``LOAD_ERRORS`` (ValueError, TypeError) for a
    truncated/corrupted file, an unknown name, a size out of range, a config nested deeper than
    ``MAX_CONFIG_DEPTH`` or weights that do not match the config; the model is only returned
    once every weight is in place.
    """
    from mpq.layers import serialization

    path = os.fspath(path)
    if os.path.isfile(path) and saving_keras.is_keras_file(path):
        return _load_keras(path, custom_objects)
    config, tensors = _read(path)
    if isinstance(config, dict) and config.get("class_name") == TORCH_MODULE:
        raise ValueError(
            f"Expected a file saved from an mpq layer or model. Received: {path!r} "
            f"holds the weights of a torch module ({config.get('module')!r}) converted with "
            "mpq.from_torch: build it again (from_torch, then the same quantize calls) and call "
            "mpq.saving.load_weights(model, path)"
        )
    skeleton = _build_on_meta(config, custom_objects, path)
    _check_match(skeleton, tensors, path)
    del skeleton
    model: Layer = serialization.deserialize(config, custom_objects=custom_objects)
    _check_and_assign(model, tensors, path)
    return model


def _build_on_meta(config: Any, custom_objects: dict[str, Any] | None, path: str) -> Any:
    """The model of ``config`` built on the meta device (shapes only, nothing allocated)."""
    from mpq.layers import serialization

    error: BaseException | None = None
    try:
        with torch.device("meta"):
            skeleton = serialization.deserialize(config, custom_objects=custom_objects)
    except LOAD_ERRORS as e:
        if not isinstance(e.__cause__, (NotImplementedError, RuntimeError)):
            raise
        error = e
    except (NotImplementedError, RuntimeError, ArithmeticError) as e:
        error = e
    if error is not None:
        raise ValueError(
            f"Expected a config in {path!r} that builds on the meta device: load builds the "
            "model there first (shapes only) to check it against the stored tensors before "
            "allocating, so every layer's build must not read values (docs/security.md). "
            f"Received: a build that failed with {type(error).__name__}: {str(error)[:500]}"
        ) from error
    return skeleton


def _load_keras(path: str, custom_objects: dict[str, Any] | None) -> Layer:
    """``load`` for a Keras 3 ``.keras`` file (mpq.saving_keras): the config translated as
    data, the model built on the meta device, every dataset's size and dtype checked against
    it, then the real model built and its weights written (nothing half-loaded)."""
    from mpq.layers import serialization

    text, archive = saving_keras.read_keras(path)
    with archive:
        _check_json_depth(text, path)
        try:
            config = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"The config.json in {path!r} is not valid JSON.") from e
        skeleton = _build_on_meta(config, custom_objects, path)
        plan = [
            (prefix, saving_keras.keras_vars(layer))
            for prefix, layer in saving_keras.keras_layer_paths(skeleton)
        ]
        wanted = {f"{prefix}vars/{i}": var for prefix, specs in plan for i, var in enumerate(specs)}
        expected_bytes = sum(var.numel * var.itemsize for var in wanted.values())
        with saving_keras.open_weights(archive, path, expected_bytes) as weights:
            datasets = weights.datasets()
            missing = sorted(set(wanted) - set(datasets))
            extra = sorted(set(datasets) - set(wanted))
            if missing or extra:
                raise ValueError(
                    f"The weights in {path!r} do not match the model its config describes: "
                    f"missing {missing[:10]}, unexpected {extra[:10]}."
                )
            for key, var in wanted.items():
                shape, dtype, _ = datasets[key]
                if math.prod(shape) != var.numel or dtype.itemsize != var.itemsize:
                    raise ValueError(
                        f"The weights in {path!r} do not match the model: {key} holds {shape} "
                        f"{dtype}, the model expects {var.numel} values of {var.itemsize} bytes."
                    )
            del skeleton
            model: Layer = serialization.deserialize(config, custom_objects=custom_objects)
            where = {id(m): prefix for prefix, m in model.named_modules()}
            tensors: dict[str, torch.Tensor] = {}
            for prefix, layer in saving_keras.keras_layer_paths(model):
                own = dict(layer._own_variables())
                module_path = where[id(layer)]
                for i, var in enumerate(saving_keras.keras_vars(layer)):
                    array = weights.read(f"{prefix}vars/{i}")
                    if var.mpq_name is None:
                        saving_keras.check_g_idx(layer, array)
                        continue
                    key = f"{module_path}/{var.mpq_name}" if module_path else var.mpq_name
                    tensors[key] = saving_keras.convert(
                        layer, var.mpq_name, array, own[var.mpq_name]
                    )
                for name in saving_keras.lora_vars(layer):  # Keras: zeros after a load
                    key = f"{module_path}/{name}" if module_path else name
                    tensors[key] = torch.zeros_like(own[name])
            # Keras saves no seed-generator state (Dropout(seed=...)): it restarts from the
            # seed in the config, as Keras' own load does.
            from mpq.layers.random import SeedGenerator

            for key, (module, _, t) in _collect(model).items():
                if key not in tensors and isinstance(module, SeedGenerator):
                    tensors[key] = t.detach().clone()
    _check_and_assign(model, tensors, path)
    return model


def deserialize(config: dict[str, Any], custom_objects: dict[str, Any] | None = None) -> Any:
    """A layer or model from its serialized config, mpq's (``mpq.layers.serialize``) or Keras
    3.15's (``serialize_keras_object``), built when the config has a ``build_config``; the
    same rules as ``load`` (nothing imported, LOAD_ERRORS only). No weights are read."""
    from mpq.layers import serialization

    return serialization.deserialize(config, custom_objects=custom_objects)


def load_weights(model: torch.nn.Module, path: str | os.PathLike[str]) -> None:
    """Load the weights saved at ``path`` into an existing, built ``model`` (same structure).

    Every tensor is checked (names, shapes, dtypes) before the first write.
    """
    _, tensors = _read(path)
    _check_and_assign(model, tensors, os.fspath(path))
