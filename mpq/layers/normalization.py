"""LayerNormalization and BatchNormalization with Keras 3 arguments.

Statistics follow the autocast rule "normalization": float16/bfloat16 inputs are normalized in
float32 and the result is cast back to the compute dtype; gamma/beta/moving statistics are
kept in the variable dtype (they are not autocast).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from mpq import constraints, initializers, regularizers
from mpq._errors import describe as _describe
from mpq.layers.base import Layer
from mpq.layers.input_spec import InputSpec
from mpq.layers.serialization import register_layer
from mpq.layers.torch_views import BatchNormViews, LayerNormViews

__all__ = ["BatchNormalization", "LayerNormalization", "RMSNormalization"]

Shape = tuple[int | None, ...]

# Added to the mask weight sum in masked moments, as Keras' backend epsilon.
_MASK_EPSILON = 1e-7


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _resolve_axes(axes: Sequence[int], ndim: int, shape: Sequence[int | None]) -> tuple[int, ...]:
    out = []
    for a in axes:
        if not -ndim <= a < ndim:
            raise ValueError(
                f"Expected every axis to be in [-{ndim}, {ndim}) for inputs of rank {ndim}. "
                f"Received: axis={a} with input_shape={tuple(shape)}"
            )
        out.append(a % ndim)
    if len(set(out)) != len(out):
        raise ValueError(f"Expected distinct axes. Received: axis={list(axes)}")
    return tuple(sorted(out))


def _as_shape(input_shape: Any) -> Shape:
    """`input_shape` (a sequence of sizes, None for unknown ones) as a tuple."""
    return tuple(input_shape)


def _stats_dtype(layer: Layer, x: torch.Tensor) -> torch.dtype:
    # the "normalization" autocast rule: float32 (float64 for float64 inputs)
    return layer._op_dtype("normalization", x.dtype)


def _add_gamma_beta(layer: Layer, shape: Shape, scale: bool, center: bool) -> None:
    """Create ``layer.gamma`` (if ``scale``, else None) and ``layer.beta`` (if ``center``) of
    ``shape`` from the layer's ``{gamma,beta}_{initializer,regularizer,constraint}``: trainable
    and read without autocast (the normalization runs in its own dtype)."""
    for name, wanted in (("gamma", scale), ("beta", center)):
        weight = None
        if wanted:
            weight = layer.add_weight(
                shape=shape,
                initializer=getattr(layer, f"{name}_initializer"),
                regularizer=getattr(layer, f"{name}_regularizer"),
                constraint=getattr(layer, f"{name}_constraint"),
                trainable=True,
                autocast=False,
                name=name,
            )
        setattr(layer, name, weight)


_RENORM_CLIPPING_KEYS = ("rmax", "rmin", "dmax")


def _check_renorm_clipping(clipping: Any) -> dict[str, float]:
    """`renorm_clipping` as tf.keras 2.x accepts it: None or a dict with some of the keys
    "rmax", "rmin", "dmax" (numbers; rmin <= rmax, dmax >= 0)."""
    if clipping is None:
        return {}
    if not isinstance(clipping, dict):
        raise TypeError(
            'Expected `renorm_clipping` to be None or a dict with keys among "rmax", "rmin", '
            f'"dmax". Received: renorm_clipping={_describe(clipping)}'
        )
    unknown = sorted(set(clipping) - set(_RENORM_CLIPPING_KEYS), key=str)
    if unknown:
        raise ValueError(
            f"Expected `renorm_clipping` keys among {list(_RENORM_CLIPPING_KEYS)}. "
            f"Received: renorm_clipping={clipping!r} (unknown keys {unknown})"
        )
    out: dict[str, float] = {}
    for key, value in clipping.items():
        if value is None:  # tf.keras treats a None value as no bound
            continue
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value != value:
            raise TypeError(
                f"Expected renorm_clipping[{key!r}] to be a number. "
                f"Received: {key}={_describe(value)}"
            )
        out[key] = float(value)
    if out.get("dmax", 0.0) < 0 or out.get("rmin", 0.0) > out.get("rmax", float("inf")):
        raise ValueError(
            "Expected renorm_clipping with dmax >= 0 and rmin <= rmax. "
            f"Received: renorm_clipping={clipping!r}"
        )
    return out


class _SqrtInitializer(initializers.Initializer):
    """The square root of another initializer's values (tf.keras 2.x initializes the renorm
    stddevs with `sqrt(moving_variance_initializer(...))`). Internal: not serialized."""

    def __init__(self, base: Any) -> None:
        self.base = base

    def __call__(self, shape: Sequence[int], dtype: Any = None) -> torch.Tensor:
        values: torch.Tensor = self.base(shape, dtype=dtype)
        return torch.sqrt(values)


@register_layer("mpq")
class LayerNormalization(LayerNormViews, Layer):  # type: ignore[misc]  # apply(): see extras
    """Normalizes each example over `axis`: `(x - mean) / sqrt(var + epsilon) * gamma + beta`.

    Args (Keras 3 names and defaults): axis=-1 (int or list of ints), epsilon=1e-3,
    center=True, scale=True, rms_scaling=False (then `x / sqrt(var(x) + epsilon) * gamma`,
    center and scale ignored: Keras 3's definition, which scales by the variance over `axis`
    and not by the mean square, and subtracts no mean from `x`; Keras 3.15 deprecates the
    argument for that reason),
    beta_initializer="zeros", gamma_initializer="ones", beta/gamma regularizers and constraints.

    Weights: `gamma` and `beta` with the shape of the normalized axes (in increasing axis
    order), in the variable dtype. Input and output: any shape; the output has the compute
    dtype, the statistics run in float32 for float16/bfloat16 inputs.

    >>> layer = LayerNormalization()
    >>> layer(torch.randn(2, 5, 8)).shape
    torch.Size([2, 5, 8])
    """

    _input_kind = "float"  # see Layer._input_kind
    _true_rms = False  # RMSNormalization: the root mean square, not Keras' rms_scaling

    def __init__(
        self,
        axis: int | Sequence[int] = -1,
        epsilon: float = 1e-3,
        center: bool = True,
        scale: bool = True,
        rms_scaling: bool = False,
        beta_initializer: Any = "zeros",
        gamma_initializer: Any = "ones",
        beta_regularizer: Any = None,
        gamma_regularizer: Any = None,
        beta_constraint: Any = None,
        gamma_constraint: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if isinstance(axis, int) and not isinstance(axis, bool):
            self.axis: int | list[int] = axis
        elif isinstance(axis, (list, tuple)) and axis and all(_is_int(a) for a in axis):
            self.axis = list(axis)
        else:
            raise TypeError(
                f"Expected `axis` to be an int or a non-empty list/tuple of ints. "
                f"Received: axis={_describe(axis)}"
            )
        if not isinstance(epsilon, (int, float)) or isinstance(epsilon, bool) or epsilon < 0:
            raise ValueError(
                f"Expected `epsilon` to be a non-negative float. Received: epsilon={_describe(epsilon)}"
            )
        self.epsilon = float(epsilon)
        self.center = bool(center)
        self.scale = bool(scale)
        self.rms_scaling = bool(rms_scaling)
        self.beta_initializer = initializers.get(beta_initializer)
        self.gamma_initializer = initializers.get(gamma_initializer)
        self.beta_regularizer = regularizers.get(beta_regularizer)
        self.gamma_regularizer = regularizers.get(gamma_regularizer)
        self.beta_constraint = constraints.get(beta_constraint)
        self.gamma_constraint = constraints.get(gamma_constraint)
        self.supports_masking = True
        self._axes: tuple[int, ...] = ()

    def _axis_list(self) -> list[int]:
        return [self.axis] if isinstance(self.axis, int) else list(self.axis)

    def compute_output_shape(self, input_shape: Sequence[int | None]) -> Shape:
        input_shape = tuple(input_shape)
        _resolve_axes(self._axis_list(), len(input_shape), input_shape)
        return input_shape

    def build(self, input_shape: Any = None) -> None:
        input_shape = _as_shape(input_shape)
        self._axes = _resolve_axes(self._axis_list(), len(input_shape), input_shape)
        shape = tuple(d for d in (input_shape[a] for a in self._axes) if d is not None)
        if len(shape) != len(self._axes):
            raise ValueError(
                f"Expected the normalized axes {self._axes} to have known sizes. "
                f"Received: input_shape={input_shape}"
            )
        _add_gamma_beta(
            self,
            shape,
            scale=self.scale or self.rms_scaling,
            center=self.center and not self.rms_scaling,
        )
        if all(a < 0 for a in self._axis_list()):
            # Trailing axes given from the end (torch's LayerNorm): any rank that has them.
            n = len(input_shape)
            self.input_spec = InputSpec(
                min_ndim=len(self._axes) + 1,
                axes={a - n: d for a, d in zip(self._axes, shape, strict=True)},
            )
        else:
            self.input_spec = InputSpec(
                ndim=len(input_shape), axes=dict(zip(self._axes, shape, strict=True))
            )

    def call(self, inputs: torch.Tensor) -> torch.Tensor:
        out_dtype = inputs.dtype
        stats = _stats_dtype(self, inputs)
        x = inputs.to(stats)
        ndim = x.ndim
        axes = self._axes
        if all(a < 0 for a in self._axis_list()):  # counted from the end: this call's rank
            axes = _resolve_axes(self._axis_list(), ndim, x.shape)
        gamma = None if self.gamma is None else self.gamma.to(stats)
        beta = None if self.beta is None else self.beta.to(stats)
        trailing = axes == tuple(range(ndim - len(axes), ndim))
        if trailing and self._true_rms:
            y = F.rms_norm(x, x.shape[ndim - len(axes) :], gamma, self.epsilon)
            return y.to(out_dtype)
        if trailing and not self.rms_scaling:
            normalized_shape = x.shape[ndim - len(axes) :]
            y = F.layer_norm(x, normalized_shape, gamma, beta, self.epsilon)
            return y.to(out_dtype)
        bshape = [1] * ndim
        for a in axes:
            bshape[a] = x.shape[a]
        if self._true_rms:  # RMSNormalization: x * rsqrt(mean(x**2) + epsilon)
            y = x * torch.rsqrt(x.square().mean(axes, keepdim=True) + self.epsilon)
        elif self.rms_scaling:
            # Keras 3 (ops.layer_normalization, rms_scaling=True): x * rsqrt(var(x) + epsilon)
            var = torch.var(x, axes, correction=0, keepdim=True)
            y = x * torch.rsqrt(var + self.epsilon)
        else:
            var, mean = torch.var_mean(x, axes, correction=0, keepdim=True)
            y = (x - mean) * torch.rsqrt(var + self.epsilon)
        if gamma is not None:
            y = y * gamma.reshape(bshape)
        if beta is not None:
            y = y + beta.reshape(bshape)
        return y.to(out_dtype)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                "axis": self.axis,
                "epsilon": self.epsilon,
                "center": self.center,
                "scale": self.scale,
                "rms_scaling": self.rms_scaling,
                "beta_initializer": initializers.serialize(self.beta_initializer),
                "gamma_initializer": initializers.serialize(self.gamma_initializer),
                "beta_regularizer": regularizers.serialize(self.beta_regularizer),
                "gamma_regularizer": regularizers.serialize(self.gamma_regularizer),
                "beta_constraint": constraints.serialize(self.beta_constraint),
                "gamma_constraint": constraints.serialize(self.gamma_constraint),
            }
        )
        return config


@register_layer("mpq")
class RMSNormalization(LayerNormalization):
    """Keras 3.15 `RMSNormalization(axis=-1, epsilon=1e-6)`: `x * rsqrt(mean(x**2) + epsilon) *
    scale` over `axis`, the true root mean square (what torch's `nn.RMSNorm`, Llama's and T5's
    norms compute; `mpq.from_torch` converts them to this layer). The scale weight is `gamma`
    (Keras calls it `scale`; `.keras` files map it), initialized to ones.

    >>> RMSNormalization()(2 * torch.ones(2, 4)).detach()
    tensor([[1.0000, 1.0000, 1.0000, 1.0000],
            [1.0000, 1.0000, 1.0000, 1.0000]])
    """

    _true_rms = True

    def __init__(self, axis: int | Sequence[int] = -1, epsilon: float = 1e-6, **kwargs: Any):
        super().__init__(axis=axis, epsilon=epsilon, center=False, scale=True, **kwargs)

    def get_config(self) -> dict[str, Any]:
        config = Layer.get_config(self)
        config.update({"axis": self.axis, "epsilon": self.epsilon})
        return config


@register_layer("mpq")
class BatchNormalization(BatchNormViews, Layer):  # type: ignore[misc]  # apply(): see extras
    """Normalizes over the batch (and every axis but `axis`), tracking moving statistics.

    Training (`training=True` and `layer.trainable`): normalizes with the batch mean and
    (population) variance and updates, in the variable dtype,
    `moving_mean = moving_mean * momentum + mean * (1 - momentum)` (same for the variance).
    Otherwise: normalizes with the moving statistics and updates nothing. A `mask` of shape
    `inputs.shape[:-1]` excludes positions from the batch statistics.

    Args (Keras 3 names and defaults): axis=-1, momentum=0.99, epsilon=1e-3, center=True,
    scale=True, beta_initializer="zeros", gamma_initializer="ones",
    moving_mean_initializer="zeros", moving_variance_initializer="ones", beta/gamma
    regularizers and constraints, synchronized=False (True is not supported: raises).

    Batch renormalization (Ioffe, 2017) as tf.keras 2.x has it (Keras 3 dropped it):
    renorm=False, renorm_clipping=None (a dict with optional keys "rmin", "rmax", "dmax"),
    renorm_momentum=0.99. In training, with the batch `mean`, `var` and
    `std = sqrt(var + epsilon)`, `r = std / max(renorm_stddev, sqrt(epsilon))` and
    `d = (mean - renorm_mean) / max(renorm_stddev, sqrt(epsilon))` are clipped to
    `[rmin, rmax]` and `[-dmax, dmax]`, taken as constants (no gradient), and the output is
    `(x - mean) / std * (r * gamma) + (d * gamma + beta)`. Then `renorm_mean` and
    `renorm_stddev` move towards `mean` and `std` with `renorm_momentum`, `moving_mean`
    towards `mean` and `moving_stddev` towards `std` with `momentum`, and
    `moving_variance = max(moving_stddev**2 - epsilon, 0)`. Inference is unchanged.

    Weights: `gamma`, `beta` (trainable), `moving_mean`, `moving_variance` (non-trainable),
    each `[channels]` in the variable dtype; with renorm also `moving_stddev`, `renorm_mean`
    and `renorm_stddev` (non-trainable; the stddevs start at the square root of
    `moving_variance_initializer`). Output: input shape, compute dtype; statistics in
    float32 for float16/bfloat16 inputs.

    >>> bn = BatchNormalization()
    >>> bn(torch.randn(4, 3), training=True).shape
    torch.Size([4, 3])
    """

    _input_kind = "float"  # see Layer._input_kind

    def __init__(
        self,
        axis: int = -1,
        momentum: float = 0.99,
        epsilon: float = 1e-3,
        center: bool = True,
        scale: bool = True,
        beta_initializer: Any = "zeros",
        gamma_initializer: Any = "ones",
        moving_mean_initializer: Any = "zeros",
        moving_variance_initializer: Any = "ones",
        beta_regularizer: Any = None,
        gamma_regularizer: Any = None,
        beta_constraint: Any = None,
        gamma_constraint: Any = None,
        synchronized: bool = False,
        renorm: bool = False,
        renorm_clipping: dict[str, float] | None = None,
        renorm_momentum: float = 0.99,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not _is_int(axis):
            raise TypeError(f"Expected `axis` to be an int. Received: axis={_describe(axis)}")
        if (
            not isinstance(momentum, (int, float))
            or isinstance(momentum, bool)
            or not (0.0 <= momentum <= 1.0)
        ):
            raise ValueError(
                f"Expected `momentum` to be a float in [0, 1]. "
                f"Received: momentum={_describe(momentum)}"
            )
        if not isinstance(epsilon, (int, float)) or isinstance(epsilon, bool) or epsilon < 0:
            raise ValueError(
                f"Expected `epsilon` to be a non-negative float. Received: epsilon={_describe(epsilon)}"
            )
        if synchronized:
            raise ValueError(
                "Expected synchronized=False: cross-replica batch statistics are not "
                f"supported by mpq. Received: synchronized={synchronized!r}"
            )
        self.renorm = bool(renorm)
        self.renorm_clipping = _check_renorm_clipping(renorm_clipping) if self.renorm else {}
        if (
            not isinstance(renorm_momentum, (int, float))
            or isinstance(renorm_momentum, bool)
            or not (0.0 <= renorm_momentum <= 1.0)
        ):
            raise ValueError(
                "Expected `renorm_momentum` to be a float in [0, 1]. "
                f"Received: renorm_momentum={_describe(renorm_momentum)}"
            )
        self.renorm_momentum = float(renorm_momentum)
        self.axis = axis
        self.momentum = float(momentum)
        self.epsilon = float(epsilon)
        self.center = bool(center)
        self.scale = bool(scale)
        self.synchronized = False
        self.beta_initializer = initializers.get(beta_initializer)
        self.gamma_initializer = initializers.get(gamma_initializer)
        self.moving_mean_initializer = initializers.get(moving_mean_initializer)
        self.moving_variance_initializer = initializers.get(moving_variance_initializer)
        self.beta_regularizer = regularizers.get(beta_regularizer)
        self.gamma_regularizer = regularizers.get(gamma_regularizer)
        self.beta_constraint = constraints.get(beta_constraint)
        self.gamma_constraint = constraints.get(gamma_constraint)
        self.supports_masking = True
        self._channel_axis = -1
        self._reduction_axes: tuple[int, ...] = ()

    def compute_output_shape(self, input_shape: Sequence[int | None]) -> Shape:
        input_shape = tuple(input_shape)
        _resolve_axes([self.axis], len(input_shape), input_shape)
        return input_shape

    def build(self, input_shape: Any = None) -> None:
        input_shape = _as_shape(input_shape)
        (self._channel_axis,) = _resolve_axes([self.axis], len(input_shape), input_shape)
        channels = input_shape[self._channel_axis]
        if channels is None:
            raise ValueError(
                f"Expected axis {self.axis} of the inputs to have a known size. "
                f"Received: input_shape={input_shape}"
            )
        self._reduction_axes = tuple(i for i in range(len(input_shape)) if i != self._channel_axis)
        shape = (channels,)
        _add_gamma_beta(self, shape, scale=self.scale, center=self.center)
        self.moving_mean = self.add_weight(
            shape=shape,
            initializer=self.moving_mean_initializer,
            trainable=False,
            autocast=False,
            name="moving_mean",
        )
        self.moving_variance = self.add_weight(
            shape=shape,
            initializer=self.moving_variance_initializer,
            trainable=False,
            autocast=False,
            name="moving_variance",
        )
        if self.renorm:
            stddev_init = _SqrtInitializer(self.moving_variance_initializer)
            for name, init in (
                ("moving_stddev", stddev_init),
                ("renorm_mean", self.moving_mean_initializer),
                ("renorm_stddev", stddev_init),
            ):
                weight = self.add_weight(
                    shape=shape, initializer=init, trainable=False, autocast=False, name=name
                )
                setattr(self, name, weight)
        self.input_spec = InputSpec(ndim=len(input_shape), axes={self._channel_axis: channels})

    def _moments(
        self, x: torch.Tensor, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if mask is None:
            var, mean = torch.var_mean(x, self._reduction_axes, correction=0)
            return mean, var
        if mask.ndim != x.ndim - 1:
            raise ValueError(
                "Expected a mask with one dimension less than the inputs. "
                f"Received: mask.shape={tuple(mask.shape)}, inputs.shape={tuple(x.shape)}"
            )
        w = mask.to(x.dtype).unsqueeze(-1).expand_as(x)
        total = w.sum(self._reduction_axes, keepdim=True) + _MASK_EPSILON
        mean = (w * x).sum(self._reduction_axes, keepdim=True) / total
        var = (w * (x - mean).square()).sum(self._reduction_axes, keepdim=True) / total
        return mean.reshape(-1), var.reshape(-1)

    def call(
        self, inputs: torch.Tensor, training: bool | None = None, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        out_dtype = inputs.dtype
        stats = _stats_dtype(self, inputs)
        x = inputs.to(stats)
        if training and self.trainable and self.renorm:
            return self._renorm_call(x, mask).to(out_dtype)
        if training and self.trainable:
            mean, var = self._moments(x, mask)
            m = self.momentum
            with torch.no_grad():
                moving_mean, moving_var = self.moving_mean, self.moving_variance
                moving_mean.assign(moving_mean.to(stats) * m + mean.detach() * (1.0 - m))
                moving_var.assign(moving_var.to(stats) * m + var.detach() * (1.0 - m))
        else:
            mean = self.moving_mean.to(stats)
            var = self.moving_variance.to(stats)
            if self._channel_axis == 1:
                # torch's layout: torch's own inference op, so that a model converted from
                # torch (mpq.from_torch) computes what it did, bit for bit.
                gamma = None if self.gamma is None else self.gamma.to(stats)
                beta = None if self.beta is None else self.beta.to(stats)
                y = F.batch_norm(x, mean, var, gamma, beta, False, 0.0, self.epsilon)
                return y.to(out_dtype)
        bshape = [1] * x.ndim
        bshape[self._channel_axis] = x.shape[self._channel_axis]
        inv = torch.rsqrt(var + self.epsilon)
        if self.gamma is not None:
            inv = inv * self.gamma.to(stats)
        shift = -mean * inv
        if self.beta is not None:
            shift = shift + self.beta.to(stats)
        y = x * inv.reshape(bshape) + shift.reshape(bshape)
        return y.to(out_dtype)

    def _renorm_call(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Training step with batch renormalization (tf.keras 2.x `BatchNormalization`,
        `_renorm_correction_and_moments`): corrections from the pre-update renorm statistics,
        then every moving statistic updated."""
        stats = x.dtype
        mean, var = self._moments(x, mask)
        std = torch.sqrt(var + self.epsilon)
        with torch.no_grad():
            renorm_mean = self.renorm_mean.to(stats)
            renorm_std = torch.clamp(self.renorm_stddev.to(stats), min=self.epsilon**0.5)
            r = std.detach() / renorm_std
            d = (mean.detach() - renorm_mean) / renorm_std
            clip = self.renorm_clipping
            if "rmin" in clip:
                r = torch.clamp(r, min=clip["rmin"])
            if "rmax" in clip:
                r = torch.clamp(r, max=clip["rmax"])
            if "dmax" in clip:
                d = torch.clamp(d, -clip["dmax"], clip["dmax"])
            rm, m = self.renorm_momentum, self.momentum
            self.renorm_mean.assign(renorm_mean * rm + mean.detach() * (1.0 - rm))
            self.renorm_stddev.assign(self.renorm_stddev.to(stats) * rm + std.detach() * (1.0 - rm))
            self.moving_mean.assign(self.moving_mean.to(stats) * m + mean.detach() * (1.0 - m))
            moving_std = self.moving_stddev.to(stats) * m + std.detach() * (1.0 - m)
            self.moving_stddev.assign(moving_std)
            # what was stored (in the variable dtype) is what the variance is derived from
            moving_std = self.moving_stddev.to(stats)
            self.moving_variance.assign(torch.relu(moving_std * moving_std - self.epsilon))
        scale = r if self.gamma is None else r * self.gamma.to(stats)
        offset = d if self.gamma is None else d * self.gamma.to(stats)
        if self.beta is not None:
            offset = offset + self.beta.to(stats)
        bshape = [1] * x.ndim
        bshape[self._channel_axis] = x.shape[self._channel_axis]
        inv = scale / std
        y: torch.Tensor = x * inv.reshape(bshape) + (offset - mean * inv).reshape(bshape)
        return y

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        if self.renorm:  # only when set, as tf.keras 2.x writes them
            config.update(
                {
                    "renorm": True,
                    "renorm_clipping": dict(self.renorm_clipping),
                    "renorm_momentum": self.renorm_momentum,
                }
            )
        config.update(
            {
                "axis": self.axis,
                "momentum": self.momentum,
                "epsilon": self.epsilon,
                "center": self.center,
                "scale": self.scale,
                "beta_initializer": initializers.serialize(self.beta_initializer),
                "gamma_initializer": initializers.serialize(self.gamma_initializer),
                "moving_mean_initializer": initializers.serialize(self.moving_mean_initializer),
                "moving_variance_initializer": initializers.serialize(
                    self.moving_variance_initializer
                ),
                "beta_regularizer": regularizers.serialize(self.beta_regularizer),
                "gamma_regularizer": regularizers.serialize(self.gamma_regularizer),
                "beta_constraint": constraints.serialize(self.beta_constraint),
                "gamma_constraint": constraints.serialize(self.gamma_constraint),
                "synchronized": self.synchronized,
            }
        )
        return config
