"""Built-in model factories for sweeps (digits CNN and MLP, a larger synthetic MLP), and the
lookup of user factories by name or `"package.module:function"`.

A factory is called as `factory(dtype=policy, **kwargs)` and returns an (unbuilt) mpq model.
Built-in layers have explicit names, so layer paths (and suggested policy maps) are stable.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mpq.layers import Layer, Sequential
    from mpq.policy import DTypePolicy

__all__ = [
    "BUILTIN_MODELS",
    "digits_cnn",
    "digits_mlp",
    "regression_mlp",
    "resolve_factory",
    "synthetic_mlp",
    "tiny_lm",
]


def digits_cnn(
    dtype: str | DTypePolicy | None = None, filters: Sequence[int] = (16, 32), num_classes: int = 10
) -> Sequential:
    """Conv2D(16, 3, relu) -> Conv2D(32, 3, relu) -> Flatten -> Dense(10), for `[N, 8, 8, 1]`
    NHWC digits (about 10k parameters).

    Example:
        >>> model = digits_cnn(dtype="mixed_bfloat16")
    """
    from mpq.layers import Dense, Sequential

    try:
        from mpq.layers import Conv2D, Flatten
    except ImportError:  # before mpq.layers re-exports them
        from mpq.layers.conv import Conv2D
        from mpq.layers.core import Flatten

    convs = [Conv2D(f, 3, activation="relu", name=f"conv_{i}") for i, f in enumerate(filters)]
    head = [Flatten(name="flatten"), Dense(num_classes, name="dense")]
    return Sequential([*convs, *head], dtype=dtype, name="digits_cnn")


def digits_mlp(
    dtype: str | DTypePolicy | None = None, hidden: Sequence[int] = (128, 64), num_classes: int = 10
) -> Sequential:
    """Dense(128, relu) -> Dense(64, relu) -> Dense(10) on `[N, 64]` digits (about 17k params)."""
    from mpq.layers import Dense, Sequential

    layers = [Dense(h, activation="relu", name=f"dense_{i}") for i, h in enumerate(hidden)]
    out = Dense(num_classes, name=f"dense_{len(hidden)}")
    return Sequential([*layers, out], dtype=dtype, name="digits_mlp")


def synthetic_mlp(
    dtype: str | DTypePolicy | None = None,
    hidden: Sequence[int] = (1024, 1024),
    num_classes: int = 16,
) -> Sequential:
    """Dense(1024, relu) -> Dense(1024, relu) -> Dense(16) on `[N, 512]` synthetic features
    (about 1.6M parameters): big enough for the kernels' speed to show on a GPU."""
    from mpq.layers import Dense, Sequential

    layers = [Dense(h, activation="relu", name=f"dense_{i}") for i, h in enumerate(hidden)]
    out = Dense(num_classes, name=f"dense_{len(hidden)}")
    return Sequential([*layers, out], dtype=dtype, name="synthetic_mlp")


def regression_mlp(
    dtype: str | DTypePolicy | None = None, hidden: Sequence[int] = (64, 64)
) -> Sequential:
    """Dense(64, relu) -> Dense(64, relu) -> Dense(1) for the `regression` task."""
    from mpq.layers import Dense, Sequential

    layers = [Dense(h, activation="relu", name=f"dense_{i}") for i, h in enumerate(hidden)]
    return Sequential(
        [*layers, Dense(1, name=f"dense_{len(hidden)}")], dtype=dtype, name="regression_mlp"
    )


def tiny_lm(dtype: str | DTypePolicy | None = None, **kwargs: int) -> Layer:
    """The language-model task's decoder-only transformer (`mpq.sweep.tasks.lm.tiny_lm`)."""
    from mpq.sweep.tasks.lm import tiny_lm as make

    return make(dtype=dtype, **kwargs)


#: name -> (factory, default data name)
BUILTIN_MODELS: dict[str, tuple[Callable[..., Any], str]] = {
    "digits_cnn": (digits_cnn, "digits"),
    "digits_mlp": (digits_mlp, "digits_flat"),
    "synthetic_mlp": (synthetic_mlp, "synthetic"),
    "regression_mlp": (regression_mlp, "synthetic_regression"),
    "tiny_lm": (tiny_lm, "stdlib_bytes"),
}


def resolve_factory(ref: str | Callable[..., Any]) -> tuple[Callable[..., Any], str | None]:
    """`(factory, default_data)` from a built-in name, `"package.module:function"`, or a
    callable (default data None: the factory returns `(model, data)` or the spec names data)."""
    if callable(ref):
        return ref, None
    if isinstance(ref, str):
        if ref in BUILTIN_MODELS:
            return BUILTIN_MODELS[ref]
        if ":" in ref:
            from mpq.sweep.data import _import_ref

            return _import_ref(ref, "model factory"), None
        raise ValueError(
            f"Expected a model name from {sorted(BUILTIN_MODELS)} or 'package.module:function'. "
            f"Received: model={ref!r}"
        )
    raise TypeError(
        f"Expected a model name or a callable. Received: model={ref!r} (of type {type(ref).__name__})"
    )
