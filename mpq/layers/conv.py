"""Conv1D and Conv2D layers with Keras 3 arguments, kernel layout and "same" padding.

The convolution itself goes through one private function per op (`_conv1d`, `_conv2d`) taking
channels-last inputs and Keras-layout kernels, so a kernel backend can be wired in one place.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from mpq import activations, constraints, initializers, kernels, regularizers
from mpq._errors import MAX_SIZE
from mpq._errors import describe as _describe
from mpq.layers.base import Layer
from mpq.layers.input_spec import InputSpec
from mpq.layers.lora import LoRAMixin
from mpq.layers.serialization import register_layer
from mpq.layers.torch_views import ConvViews
from mpq.layers.variables import Variable

__all__ = ["Conv1D", "Conv2D", "conv_output_length", "same_padding"]

Shape = tuple[int | None, ...]


# ----------------------------------------------------------------------------- the ops
# Input dtypes `mpq.kernels.conv2d` covers for float layers; float64 runs in plain torch.
_KERNEL_DTYPES = frozenset({torch.float32, torch.float16, torch.bfloat16})


def _conv1d(
    x_nlc: torch.Tensor,
    kernel_lio: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    stride: int,
    padding: tuple[int, int],
    dilation: int,
    groups: int,
) -> torch.Tensor:
    """1-D convolution (cross-correlation), channels last: a 2-D one over a unit height.

    x_nlc: [N, L, C_in]; kernel_lio: [k, C_in // groups, C_out] (Keras layout);
    bias: [C_out] or None; padding: (left, right) zeros. Returns [N, L_out, C_out] in x's dtype.
    """
    y = _conv2d(
        x_nlc.unsqueeze(1),
        kernel_lio.unsqueeze(0),
        bias,
        stride=(1, stride),
        padding=((0, 0), (padding[0], padding[1])),
        dilation=(1, dilation),
        groups=groups,
    )
    return y.squeeze(1)


def _conv2d(
    x_nhwc: torch.Tensor,
    kernel_hwio: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    stride: tuple[int, int],
    padding: tuple[tuple[int, int], tuple[int, int]],
    dilation: tuple[int, int],
    groups: int,
) -> torch.Tensor:
    """2-D convolution (cross-correlation), NHWC, through `mpq.kernels.conv2d`.

    x_nhwc: [N, H, W, C_in]; kernel_hwio: [kh, kw, C_in // groups, C_out] (Keras layout);
    bias: [C_out] or None; padding: ((top, bottom), (left, right)) zeros.
    Returns [N, H_out, W_out, C_out] in x's dtype.
    """
    w_ohwi = kernel_hwio.permute(3, 0, 1, 2)  # the kernels' [OC, KH, KW, C/groups] (a view)
    if x_nhwc.dtype in _KERNEL_DTYPES:
        return kernels.conv2d(
            x_nhwc, w_ohwi, stride=stride, padding=padding, dilation=dilation, groups=groups,
            bias=bias,
        )  # fmt: skip
    # float64: not a kernel dtype; torch on the channels_last view of the same tensors.
    x_nchw = x_nhwc.permute(0, 3, 1, 2)
    (top, bottom), (left, right) = padding
    x_nchw = F.pad(x_nchw, (left, right, top, bottom))
    y = F.conv2d(x_nchw, w_ohwi.permute(0, 3, 1, 2).contiguous(), bias, stride, 0, dilation, groups)
    return y.permute(0, 2, 3, 1)


# ----------------------------------------------------------------------------- shape helpers
def conv_output_length(
    length: int | None, kernel_size: int, padding: str, stride: int, dilation: int
) -> int | None:
    """Output length of a convolution along one axis (None stays None).

    "valid": floor((L - (k - 1) * d - 1) / s) + 1; "same" and "causal": ceil(L / s).

    >>> conv_output_length(10, 3, "valid", 2, 1), conv_output_length(10, 3, "same", 2, 1)
    (4, 5)
    """
    if length is None:
        return None
    if padding == "valid":
        return (length - (kernel_size - 1) * dilation - 1) // stride + 1
    return (length + stride - 1) // stride


def same_padding(length: int, kernel_size: int, stride: int, dilation: int) -> tuple[int, int]:
    """(before, after) zero padding that makes "same" match TensorFlow/Keras: the output has
    ceil(L / s) positions and an odd total pad puts the extra zero after.

    >>> same_padding(5, 2, 1, 1)
    (0, 1)
    """
    out = (length + stride - 1) // stride
    total = max((out - 1) * stride + (kernel_size - 1) * dilation + 1 - length, 0)
    return total // 2, total - total // 2


def _int_tuple(value: Any, n: int, name: str, *, allow_zero: bool = False) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        values: tuple[Any, ...] = (value,) * n
    elif isinstance(value, (tuple, list)):
        values = tuple(value)
    else:
        values = ()
    if len(values) != n or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise ValueError(
            f"Expected `{name}` to be an int or a tuple of {n} ints. "
            f"Received: {name}={_describe(value)}"
        )
    low = 0 if allow_zero else 1
    if any(not low <= v <= MAX_SIZE for v in values):
        raise ValueError(
            f"Expected `{name}` to hold {'non-negative' if allow_zero else 'positive'} ints "
            f"<= {MAX_SIZE}. "
            f"Received: {name}={value!r}"
        )
    return values


def _standardize_padding(padding: Any, allow_causal: bool) -> str:
    allowed = ("valid", "same", "causal") if allow_causal else ("valid", "same")
    if not isinstance(padding, str) or padding.lower() not in allowed:
        raise ValueError(
            f"Expected `padding` to be one of {allowed}. Received: padding={_describe(padding)}"
        )
    return padding.lower()


def _standardize_data_format(data_format: Any) -> str:
    if data_format is None:
        return "channels_last"
    allowed = ("channels_last", "channels_first")
    if not isinstance(data_format, str) or data_format.lower() not in allowed:
        raise ValueError(
            f"Expected `data_format` to be one of {allowed} or None. "
            f"Received: data_format={_describe(data_format)}"
        )
    return data_format.lower()


# ----------------------------------------------------------------------------- the layers
class _Conv(ConvViews, LoRAMixin, Layer):  # type: ignore[misc]  # apply(): see extras
    """Shared implementation of Conv1D / Conv2D (rank 1 or 2)."""

    _input_kind = "float"  # see Layer._input_kind

    rank: int = 0

    # Variables from ``build`` (inside ``call`` a read gives the autocast value, a tensor).
    kernel: Variable
    bias: Variable | None

    def __init__(
        self,
        filters: int,
        kernel_size: int | Sequence[int],
        strides: int | Sequence[int] = 1,
        padding: str = "valid",
        data_format: str | None = None,
        dilation_rate: int | Sequence[int] = 1,
        groups: int = 1,
        activation: Any = None,
        use_bias: bool = True,
        kernel_initializer: Any = "glorot_uniform",
        bias_initializer: Any = "zeros",
        kernel_regularizer: Any = None,
        bias_regularizer: Any = None,
        activity_regularizer: Any = None,
        kernel_constraint: Any = None,
        bias_constraint: Any = None,
        lora_rank: int | None = None,
        lora_alpha: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(activity_regularizer=activity_regularizer, **kwargs)
        self._init_lora(lora_rank, lora_alpha)
        rank = self.rank
        if not isinstance(filters, int) or isinstance(filters, bool) or not 0 < filters <= MAX_SIZE:
            raise ValueError(
                f"Expected `filters` to be a positive int <= {MAX_SIZE}. "
                f"Received: filters={_describe(filters)}"
            )
        if not isinstance(groups, int) or isinstance(groups, bool) or groups <= 0:
            raise ValueError(
                f"Expected `groups` to be a positive int. Received: groups={_describe(groups)}"
            )
        if filters % groups != 0:
            raise ValueError(
                "Expected `filters` to be divisible by `groups`. "
                f"Received: filters={filters}, groups={groups}"
            )
        self.filters = filters
        self.groups = groups
        self.kernel_size = _int_tuple(kernel_size, rank, "kernel_size")
        self.strides = _int_tuple(strides, rank, "strides")
        self.dilation_rate = _int_tuple(dilation_rate, rank, "dilation_rate")
        self.padding = _standardize_padding(padding, allow_causal=rank == 1)
        self.data_format = _standardize_data_format(data_format)
        self.activation = activations.get(activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.bias_initializer = initializers.get(bias_initializer)
        self.kernel_regularizer = regularizers.get(kernel_regularizer)
        self.bias_regularizer = regularizers.get(bias_regularizer)
        self.kernel_constraint = constraints.get(kernel_constraint)
        self.bias_constraint = constraints.get(bias_constraint)
        self.input_spec = InputSpec(ndim=rank + 2)

    # -- shapes
    def _channel_axis(self) -> int:
        return -1 if self.data_format == "channels_last" else 1

    def _spatial(self, shape: Sequence[int | None]) -> tuple[int | None, ...]:
        return tuple(shape[1:-1]) if self.data_format == "channels_last" else tuple(shape[2:])

    def _check_input_shape(self, input_shape: Sequence[int | None]) -> None:
        if len(input_shape) != self.rank + 2:
            raise ValueError(
                f"Expected inputs of rank {self.rank + 2} for {type(self).__name__} "
                f"({self.data_format}). Received: input_shape={tuple(input_shape)}"
            )

    def compute_output_shape(self, input_shape: Sequence[int | None]) -> Shape:
        input_shape = tuple(input_shape)
        self._check_input_shape(input_shape)
        spatial = []
        for length, k, s, d in zip(
            self._spatial(input_shape),
            self.kernel_size,
            self.strides,
            self.dilation_rate,
            strict=True,
        ):
            out = conv_output_length(length, k, self.padding, s, d)
            if out is not None and out <= 0:
                raise ValueError(
                    f"Expected inputs large enough for kernel_size={self.kernel_size} and "
                    f"dilation_rate={self.dilation_rate} with padding='{self.padding}': the output "
                    f"would have {out} positions. Received: input_shape={input_shape}"
                )
            spatial.append(out)
        if self.data_format == "channels_last":
            return (input_shape[0], *spatial, self.filters)
        return (input_shape[0], self.filters, *spatial)

    def build(self, input_shape: Sequence[int | None]) -> None:  # type: ignore[override]
        input_shape = tuple(input_shape)
        self.compute_output_shape(input_shape)  # validates rank and spatial sizes
        channels = input_shape[self._channel_axis()]
        if channels is None:
            raise ValueError(
                f"Expected the channel dimension of the inputs to be defined. "
                f"Received: input_shape={input_shape}"
            )
        if channels % self.groups != 0:
            raise ValueError(
                f"Expected the number of input channels to be divisible by groups={self.groups}. "
                f"Received: {channels} channels (input_shape={input_shape})"
            )
        self.input_spec = InputSpec(ndim=self.rank + 2, axes={self._channel_axis(): channels})
        self.kernel = self.add_weight(
            shape=(*self.kernel_size, channels // self.groups, self.filters),
            initializer=self.kernel_initializer,
            regularizer=self.kernel_regularizer,
            constraint=self.kernel_constraint,
            trainable=True,
            name="kernel",
        )
        if self.use_bias:
            self.bias = self.add_weight(
                shape=(self.filters,),
                initializer=self.bias_initializer,
                regularizer=self.bias_regularizer,
                constraint=self.bias_constraint,
                trainable=True,
                name="bias",
            )
        else:
            self.bias = None
        self._build_lora()

    # -- compute
    def _pads(self, spatial: Sequence[int]) -> list[tuple[int, int]]:
        if self.padding == "valid":
            return [(0, 0)] * self.rank
        if self.padding == "causal":
            return [((self.kernel_size[0] - 1) * self.dilation_rate[0], 0)]
        return [
            same_padding(n, k, s, d)
            for n, k, s, d in zip(
                spatial, self.kernel_size, self.strides, self.dilation_rate, strict=True
            )
        ]

    def _to_channels_last(self, x: torch.Tensor) -> torch.Tensor:
        if self.data_format == "channels_last":
            return x
        return x.movedim(1, -1)

    def _from_channels_last(self, y: torch.Tensor) -> torch.Tensor:
        if self.data_format == "channels_last":
            return y
        return y.movedim(-1, 1)

    def call(self, inputs: torch.Tensor) -> torch.Tensor:
        x = self._to_channels_last(inputs)
        pads = self._pads(x.shape[1:-1])
        bias = self.bias if self.use_bias else None
        kernel: torch.Tensor = self.kernel
        if self._call_hooks:  # LoRA / QAT (mpq.training)
            kernel, x = self._call_kernel_and_inputs(kernel, x)
        y = self._convolution(x, kernel, bias, pads)
        y = self._from_channels_last(y)
        out: torch.Tensor = self.activation(y)
        return out

    def _linear(self, inputs: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
        x = self._to_channels_last(inputs)
        y = self._convolution(x, kernel, None, self._pads(x.shape[1:-1]))
        return self._from_channels_last(y)

    def _convolution(
        self,
        x: torch.Tensor,
        kernel: torch.Tensor,
        bias: torch.Tensor | None,
        pads: list[tuple[int, int]],
    ) -> torch.Tensor:
        raise NotImplementedError

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "kernel_size": self.kernel_size,
                "strides": self.strides,
                "padding": self.padding,
                "data_format": self.data_format,
                "dilation_rate": self.dilation_rate,
                "groups": self.groups,
                "activation": activations.serialize(self.activation),
                "use_bias": self.use_bias,
                "kernel_initializer": initializers.serialize(self.kernel_initializer),
                "bias_initializer": initializers.serialize(self.bias_initializer),
                "kernel_regularizer": regularizers.serialize(self.kernel_regularizer),
                "bias_regularizer": regularizers.serialize(self.bias_regularizer),
                "kernel_constraint": constraints.serialize(self.kernel_constraint),
                "bias_constraint": constraints.serialize(self.bias_constraint),
                "lora_rank": self.lora_rank,
                "lora_alpha": self.lora_alpha,
            }
        )
        return config


@register_layer("mpq")
class Conv1D(_Conv):
    """1-D convolution over `[batch, steps, channels]` inputs (Keras 3 `Conv1D`).

    Args (Keras 3 names and defaults): filters, kernel_size, strides=1, padding="valid"
    ("valid", "same" or "causal"), data_format=None (-> "channels_last"; "channels_first" takes
    `[batch, channels, steps]`), dilation_rate=1, groups=1, activation=None, use_bias=True,
    kernel_initializer="glorot_uniform", bias_initializer="zeros", kernel/bias regularizers and
    constraints, activity_regularizer.

    Weights: `kernel` [kernel_size, in_channels // groups, filters], `bias` [filters].
    Output: `[batch, new_steps, filters]` (channels_last) with new_steps = ceil(steps / strides)
    for "same"/"causal". Runs in the compute dtype (autocast rule "conv").

    >>> layer = Conv1D(8, 3, padding="causal")
    >>> layer(torch.zeros(2, 10, 4)).shape
    torch.Size([2, 10, 8])
    """

    rank = 1

    def _convolution(
        self,
        x: torch.Tensor,
        kernel: torch.Tensor,
        bias: torch.Tensor | None,
        pads: list[tuple[int, int]],
    ) -> torch.Tensor:
        return _conv1d(
            x,
            kernel,
            bias,
            stride=self.strides[0],
            padding=pads[0],
            dilation=self.dilation_rate[0],
            groups=self.groups,
        )


@register_layer("mpq")
class Conv2D(_Conv):
    """2-D convolution over `[batch, height, width, channels]` inputs (Keras 3 `Conv2D`).

    Args (Keras 3 names and defaults): filters, kernel_size, strides=1 (an int stands for the
    pair: (1, 1)), padding="valid" ("valid" or "same"; "same" pads as TensorFlow does, the odd
    zero after), data_format=None (-> "channels_last"; "channels_first" takes
    `[batch, channels, height, width]`), dilation_rate=1 (-> (1, 1)), groups=1,
    activation=None, use_bias=True, kernel_initializer="glorot_uniform",
    bias_initializer="zeros", kernel/bias regularizers and constraints, activity_regularizer,
    lora_rank=None / lora_alpha=None. Unlike Keras, strides > 1 together with dilation_rate > 1
    is allowed.

    Weights: `kernel` [kh, kw, in_channels // groups, filters] (Keras layout), `bias` [filters].
    Runs in the compute dtype (autocast rule "conv").

    >>> layer = Conv2D(16, 3, strides=2, padding="same")
    >>> layer(torch.zeros(2, 9, 9, 3)).shape
    torch.Size([2, 5, 5, 16])
    """

    rank = 2

    def _convolution(
        self,
        x: torch.Tensor,
        kernel: torch.Tensor,
        bias: torch.Tensor | None,
        pads: list[tuple[int, int]],
    ) -> torch.Tensor:
        return _conv2d(
            x,
            kernel,
            bias,
            stride=(self.strides[0], self.strides[1]),
            padding=(pads[0], pads[1]),
            dilation=(self.dilation_rate[0], self.dilation_rate[1]),
            groups=self.groups,
        )
