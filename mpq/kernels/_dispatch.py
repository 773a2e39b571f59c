"""Public ops of mpq.kernels and the rules that pick their backend (Triton, CPU or reference).

Triton is imported only when a call is routed to it, so ``import mpq.kernels`` stays lean.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import os
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any, Protocol

import torch
import torch.nn.grad

from . import _checks, _cpu, reference

__all__ = ["BACKENDS", "conv2d", "matmul", "matmul_int4", "selected_backend", "use_backend"]

BACKENDS = ("auto", "triton", "cpu", "reference")
"""Backend names accepted by ``MPQ_KERNEL_BACKEND`` and ``use_backend``."""

ENV_VAR = "MPQ_KERNEL_BACKEND"

_FORCED: ContextVar[str | None] = ContextVar("mpq_kernel_backend", default=None)
_TRITON_FOUND: bool | None = None


def _parse_backend(name: object, source: str) -> str:
    if not isinstance(name, str) or name not in BACKENDS:
        raise ValueError(f"Expected {source} to be one of {BACKENDS}. Received: {name!r}")
    return name


def interpreter_enabled() -> bool:
    """True when ``TRITON_INTERPRET`` asks for Triton's CPU interpreter (as Triton parses it)."""
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in ("1", "true", "yes", "on", "y")


def _require_triton(why: str) -> None:
    global _TRITON_FOUND
    if _TRITON_FOUND is None:
        _TRITON_FOUND = importlib.util.find_spec("triton") is not None
    if not _TRITON_FOUND:
        raise RuntimeError(
            f"Expected the `triton` package for the Triton backend ({why}). Received: no importable "
            f"triton (Triton wheels exist for Linux x86-64 only). Use {ENV_VAR}=reference or "
            "mpq.kernels.use_backend('reference') to run the torch reference instead"
        )


def selected_backend(device: torch.device | str) -> str:
    """The backend ("triton", "cpu" or "reference") an op on tensors of ``device`` would run on.

    Order: the innermost ``use_backend(...)``, else ``MPQ_KERNEL_BACKEND`` (read at every call),
    else "auto": CUDA tensors -> "triton", CPU tensors -> "cpu" (torch's native CPU kernels,
    ``mpq.kernels._cpu``), other tensors -> "reference". A forced backend that cannot run
    raises: "triton" without the triton package or on CPU tensors without
    ``TRITON_INTERPRET=1``, "cpu" on tensors that are not on the CPU.

    Example::

        >>> with use_backend("reference"):
        ...     selected_backend("cpu")
        'reference'
    """
    device_type = device.type if isinstance(device, torch.device) else torch.device(device).type
    return _backend(device_type)


def _backend(device_type: str) -> str:
    forced = _FORCED.get()
    source = "use_backend(...)"
    if forced is None:
        env = os.environ.get(ENV_VAR)
        if env:
            forced = _parse_backend(env, f"the environment variable {ENV_VAR}")
            source = f"{ENV_VAR}={env}"
    if forced is None or forced == "auto":
        if device_type == "cuda":
            _require_triton("selected automatically for CUDA tensors")
            return "triton"
        return "cpu" if device_type == "cpu" else "reference"
    if forced == "reference":
        return "reference"
    if forced == "cpu":
        if device_type != "cpu":
            raise RuntimeError(
                f"Expected CPU tensors for the cpu backend requested by {source}. Received: "
                f"tensors on {device_type} (use the triton or reference backend for them)"
            )
        return "cpu"
    _require_triton(f"requested by {source}")
    if device_type != "cuda" and not interpreter_enabled():
        raise RuntimeError(
            f"Expected CUDA tensors, or TRITON_INTERPRET=1 for CPU tensors, to run the Triton "
            f"backend requested by {source}. Received: tensors on {device_type} without "
            "TRITON_INTERPRET=1 (set it before mpq's Triton kernels are first imported, or use the "
            "reference backend)"
        )
    return "triton"


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Force the backend of mpq.kernels ops inside the block ("triton", "cpu", "reference" or
    "auto").

    Takes precedence over ``MPQ_KERNEL_BACKEND``; nests; is local to the thread / async task.

    Example::

        >>> with use_backend("reference"):
        ...     y = matmul(torch.randn(2, 3), torch.randn(3, 4))
    """
    token = _FORCED.set(_parse_backend(name, "the backend name given to use_backend"))
    try:
        yield
    finally:
        _FORCED.reset(token)


def _route(t: object) -> str:
    """The backend of an op whose first operand is ``t``.

    Cheap for the common CPU call (no forced backend, no env var): attribute reads only, no
    ``_backend`` call. A non-tensor ``t`` goes to the reference, whose checks raise the error
    that names it."""
    if not isinstance(t, torch.Tensor):
        return "reference"
    if not t.is_cuda and _FORCED.get() is None and not os.environ.get(ENV_VAR):
        return "cpu" if t.is_cpu else "reference"
    return _backend(t.device.type)


class _Backend(Protocol):
    """What a torch backend module (``_cpu``, ``reference``) offers: the public ops."""

    def matmul(
        self,
        a: torch.Tensor,
        b: torch.Tensor,
        *,
        a_scale: torch.Tensor | None = ...,
        b_scale: torch.Tensor | None = ...,
        bias: torch.Tensor | None = ...,
        activation: str | None = ...,
        out_dtype: torch.dtype | str | None = ...,
    ) -> torch.Tensor: ...

    def matmul_int4(
        self,
        a: torch.Tensor,
        b_packed: torch.Tensor,
        b_scale: torch.Tensor,
        *,
        b_zero: torch.Tensor | None = ...,
        group_size: int | None = ...,
        bias: torch.Tensor | None = ...,
        activation: str | None = ...,
        out_dtype: torch.dtype | str | None = ...,
    ) -> torch.Tensor: ...

    def conv2d(
        self,
        x: torch.Tensor,
        w: torch.Tensor,
        *,
        stride: int | tuple[int, int] = ...,
        padding: _checks.Padding = ...,
        dilation: int | tuple[int, int] = ...,
        groups: int = ...,
        x_scale: torch.Tensor | None = ...,
        w_scale: torch.Tensor | None = ...,
        bias: torch.Tensor | None = ...,
        activation: str | None = ...,
        out_dtype: torch.dtype | str | None = ...,
    ) -> torch.Tensor: ...


_BACKEND_MODULES: dict[str, _Backend] = {"cpu": _cpu, "reference": reference}


def _needs_grad(*tensors: torch.Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(
        isinstance(t, torch.Tensor) and t.requires_grad for t in tensors
    )


def _activation_grad(z: torch.Tensor, activation: str, grad: torch.Tensor) -> torch.Tensor:
    """d act(z) / dz * grad, through the reference activation (so both backends agree)."""
    fn = reference.activation_fn(activation)
    if fn is None:  # no activation: the identity's derivative
        return grad.to(torch.float32)
    with torch.enable_grad():
        z = z.detach().requires_grad_(True)
        (gz,) = torch.autograd.grad(fn(z), z, grad.to(torch.float32))
    return gz


class _TritonMatmul(torch.autograd.Function):
    """Differentiable float matmul on the Triton backend; its backward goes through `matmul`."""

    @staticmethod
    def forward(
        ctx: Any,  # torch's autograd context (its stubs lack saved_tensors)
        a: torch.Tensor,
        b: torch.Tensor,
        bias: torch.Tensor | None,
        spec: _checks.MatmulSpec,
    ) -> torch.Tensor:
        from . import _triton_matmul

        out = _triton_matmul.matmul_checked(a, b, bias, spec)
        ctx.save_for_backward(a, b, bias)
        ctx.activation = spec.activation
        return out

    @staticmethod
    def backward(
        ctx: Any, grad: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, None]:
        a, b, bias = ctx.saved_tensors
        K, N = b.shape
        a2 = a.reshape(-1, K)
        g2 = grad.reshape(-1, N)
        if ctx.activation != "none":
            z = matmul(a2, b, bias=bias, out_dtype=torch.float32)
            g2 = _activation_grad(z, ctx.activation, g2)
        grad_a = grad_b = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_a = matmul(g2.to(a.dtype), b.t(), out_dtype=a.dtype).reshape(a.shape)
        if ctx.needs_input_grad[1]:
            grad_b = matmul(a2.t(), g2.to(a.dtype), out_dtype=b.dtype)
        if bias is not None and ctx.needs_input_grad[2]:
            grad_bias = g2.to(torch.float32).sum(0).to(bias.dtype)
        return grad_a, grad_b, grad_bias, None


def matmul(
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    a_scale: torch.Tensor | None = None,
    b_scale: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    out_dtype: torch.dtype | str | None = None,
) -> torch.Tensor:
    """``act((a @ b) * a_scale * b_scale + bias)`` with a fused epilogue, cast once to ``out_dtype``.

    Shapes: ``a`` [..., M, K] (leading dims are flattened into M), ``b`` [K, N] -> [..., M, N].

    Operands (``a.dtype`` x ``b.dtype``):

    - float32 x float32 (IEEE fp32, no TF32), float16 x float16, bfloat16 x bfloat16: float32
      accumulation; any strides; differentiable on both backends.
    - float8_e4m3fn / float8_e5m2 in any pairing: float32 accumulation.
    - int8 x int8: exact integer accumulation for any K. Each chunk of at most 131071 along K
      (``_checks.INT8_EXACT_K``) is summed exactly in int32 by the backend; longer reductions
      add the chunks' partial sums in int64, then apply the float32 epilogue to that exact sum.

    8-bit operands are forward-only and must be stored K-major: ``a`` row-major [M, K] and ``b``
    the transpose of a contiguous [N, K] weight (``b = w.t()``, the layout of
    ``torch._scaled_mm``'s second operand). Other layouts raise; nothing is transposed silently.

    Scales (8-bit operands only), float32: ``a_scale`` per-tensor (shape ``()`` or ``[1]``) or
    per-row ([M] or [M, 1]); ``b_scale`` per-tensor or per-column ([N] or [1, N]). Epilogue order
    on the fp32 accumulator: ``* a_scale``, ``* b_scale``, ``+ bias`` ([N], any float dtype), then
    ``activation`` (None/"none", "relu", "gelu" (exact erf form), "silu"), then one cast.
    ``out_dtype`` defaults to bfloat16 for 8-bit inputs, else the input dtype; int8 inputs also
    accept ``torch.int32`` to get the raw accumulator (no scales, bias or activation); an exact
    sum that does not fit in int32 (only possible for K > 131071) raises OverflowError.

    Example::

        >>> a, w = torch.randn(4, 8), torch.randn(3, 8)
        >>> matmul(a, w.t(), bias=torch.zeros(3), activation="gelu").shape
        torch.Size([4, 3])
    """
    if isinstance(a, torch.Tensor) and a.dtype == torch.int8 and a.ndim >= 2:
        if a.shape[-1] > _checks.INT8_EXACT_K:
            return _matmul_int8_split(a, b, a_scale, b_scale, bias, activation, out_dtype)
    backend = _route(a)
    if backend == "triton":
        from . import _triton_matmul

        if a.dtype in _checks.FLOAT_DTYPES and _needs_grad(a, b, bias):
            spec = _checks.check_matmul(a, b, a_scale, b_scale, bias, activation, out_dtype)
            return _apply(_TritonMatmul, a, b, bias, spec)
        return _triton_matmul.matmul(
            a,
            b,
            a_scale=a_scale,
            b_scale=b_scale,
            bias=bias,
            activation=activation,
            out_dtype=out_dtype,
        )
    return _BACKEND_MODULES[backend].matmul(
        a,
        b,
        a_scale=a_scale,
        b_scale=b_scale,
        bias=bias,
        activation=activation,
        out_dtype=out_dtype,
    )


def _apply(fn: type[torch.autograd.Function], *args: object) -> torch.Tensor:
    """``fn.apply(*args)``, typed (torch's ``Function.apply`` is unannotated)."""
    out: torch.Tensor = fn.apply(*args)  # type: ignore[no-untyped-call]
    return out


def _exact_epilogue(
    acc: torch.Tensor,
    row_scale: torch.Tensor | None,
    col_scale: torch.Tensor | None,
    bias: torch.Tensor | None,
    activation: str,
    out_dtype: torch.dtype,
    what: str,
) -> torch.Tensor:
    """The kernels' store for an exact int64 accumulator ``acc`` [M, N]: int32 if it fits (for
    ``out_dtype=int32``), else the float32 epilogue (the same ``reference.epilogue``)."""
    if out_dtype == torch.int32:
        return _checks.exact_int32(acc, what)
    return reference._store(acc, row_scale, col_scale, bias, activation, out_dtype)


def _matmul_int8_split(
    a: torch.Tensor,
    b: torch.Tensor,
    a_scale: torch.Tensor | None,
    b_scale: torch.Tensor | None,
    bias: torch.Tensor | None,
    activation: str | None,
    out_dtype: torch.dtype | str | None,
) -> torch.Tensor:
    """int8 matmul with K > INT8_EXACT_K: int32-exact chunks along K on the selected backend,
    their partial sums added in int64, then the epilogue (never a wrapped accumulator)."""
    spec = _checks.check_matmul(a, b, a_scale, b_scale, bias, activation, out_dtype)
    a2 = a.reshape(spec.M, spec.K)

    def part(start: int, stop: int) -> torch.Tensor:
        # Each chunk in the layout the 8-bit kernels take: row-major a, K-major b.
        return matmul(
            a2[:, start:stop].contiguous(),
            b[start:stop].t().contiguous().t(),
            out_dtype=torch.int32,
        )

    chunks = _checks.split_k_for_int32(spec.K, _checks.INT8_EXACT_K)  # two or more: K is long
    acc = part(*chunks[0]).to(torch.int64)
    for start, stop in chunks[1:]:
        acc.add_(part(start, stop))
    out = _exact_epilogue(
        acc, spec.a_scale, spec.b_scale, bias, spec.activation, spec.out_dtype, "matmul"
    )
    return out.reshape(*spec.lead, spec.N)


def matmul_int4(
    a: torch.Tensor,
    b_packed: torch.Tensor,
    b_scale: torch.Tensor,
    *,
    b_zero: torch.Tensor | None = None,
    group_size: int | None = None,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    out_dtype: torch.dtype | str | None = None,
) -> torch.Tensor:
    """Weight-only int4 matmul: ``act(a @ w + bias)`` with ``w = (q - b_zero) * b_scale``.

    Shapes: ``a`` [..., M, K] float32/float16/bfloat16; ``b_packed`` [ceil(K/2), N] int8 or uint8
    holding the int4 codes ``q`` of the logical [K, N] weight packed two per byte along K (element
    ``2i`` in the low nibble, sign-extended; any strides, K-major ``w_packed.t()`` is the fast
    one); ``b_scale`` float32 per output channel ([N] or [1, N]) or per group of ``group_size``
    consecutive K ([ceil(K/group_size), N], ``group_size`` required); ``b_zero`` optional, same
    shape as ``b_scale`` (float32, int8 or int32). The weight is dequantized in registers to
    ``a.dtype``, multiplied with float32 accumulation, then bias and activation are applied and
    the result is cast once to ``out_dtype`` (default ``a.dtype``). Forward-only.

    Example::

        >>> a = torch.randn(2, 4)
        >>> b_packed = torch.zeros(2, 3, dtype=torch.int8)   # K=4, N=3, all codes 0
        >>> matmul_int4(a, b_packed, torch.ones(3)).shape
        torch.Size([2, 3])
    """
    backend = _route(a)
    if backend == "triton":
        from . import _triton_matmul

        fn = _triton_matmul.matmul_int4
    else:
        fn = _BACKEND_MODULES[backend].matmul_int4
    return fn(
        a,
        b_packed,
        b_scale,
        b_zero=b_zero,
        group_size=group_size,
        bias=bias,
        activation=activation,
        out_dtype=out_dtype,
    )


class _TritonConv2d(torch.autograd.Function):
    """Differentiable float conv2d on the Triton backend (backward: torch's conv gradients)."""

    @staticmethod
    def forward(
        ctx: Any,  # torch's autograd context (its stubs lack saved_tensors)
        x: torch.Tensor,
        w: torch.Tensor,
        bias: torch.Tensor | None,
        spec: _checks.Conv2dSpec,
    ) -> torch.Tensor:
        from . import _triton_conv

        out = _triton_conv.conv2d_checked(x, w, bias, spec)
        ctx.save_for_backward(x, w, bias)
        ctx.spec = spec
        return out

    @staticmethod
    def backward(
        ctx: Any, grad: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, None]:
        from . import _triton_conv

        x, w, bias = ctx.saved_tensors
        spec: _checks.Conv2dSpec = ctx.spec
        g = grad.to(torch.float32)
        if spec.activation != "none":
            pre = dataclasses.replace(spec, activation="none", out_dtype=torch.float32)
            z = _triton_conv.conv2d_checked(x, w, bias, pre)
            g = _activation_grad(z, spec.activation, g)
        top, bottom, left, right = spec.padding
        x_nchw = x.to(torch.float32).permute(0, 3, 1, 2)
        if top or bottom or left or right:
            x_nchw = torch.nn.functional.pad(x_nchw, (left, right, top, bottom))
        w_oihw = w.to(torch.float32).permute(0, 3, 1, 2)
        g_nchw = g.permute(0, 3, 1, 2)
        grad_x = grad_w = grad_bias = None
        if ctx.needs_input_grad[0]:
            gx = torch.nn.grad.conv2d_input(  # type: ignore[no-untyped-call]  # torch: unannotated
                x_nchw.shape, w_oihw, g_nchw, spec.stride, 0, spec.dilation, spec.groups
            )
            gx = gx[:, :, top : top + spec.H, left : left + spec.W]
            grad_x = gx.permute(0, 2, 3, 1).to(x.dtype)
        if ctx.needs_input_grad[1]:
            gw = torch.nn.grad.conv2d_weight(  # type: ignore[no-untyped-call]  # torch: unannotated
                x_nchw, w_oihw.shape, g_nchw, spec.stride, 0, spec.dilation, spec.groups
            )
            grad_w = gw.permute(0, 2, 3, 1).to(w.dtype)
        if bias is not None and ctx.needs_input_grad[2]:
            grad_bias = g.sum((0, 1, 2)).to(bias.dtype)
        return grad_x, grad_w, grad_bias, None


def conv2d(
    x: torch.Tensor,
    w: torch.Tensor,
    *,
    stride: int | tuple[int, int] = 1,
    padding: _checks.Padding = 0,
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
    x_scale: torch.Tensor | None = None,
    w_scale: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    out_dtype: torch.dtype | str | None = None,
) -> torch.Tensor:
    """Channels-last 2-D convolution with the fused epilogue of ``matmul`` (implicit GEMM).

    Shapes: ``x`` [N, H, W, C] (NHWC), ``w`` [OC, KH, KW, C/groups] (K-major: each output
    channel's KH*KW*C/groups values are contiguous; 8-bit ``w`` must be contiguous) ->
    [N, OH, OW, OC] contiguous. ``padding``: int, (ph, pw) or ((top, bottom), (left, right)).
    Same operand dtypes, accumulation, epilogue and defaults as ``matmul``; ``x_scale`` is
    per-tensor, ``w_scale`` per-tensor or per output channel ([OC]). Float operands are
    differentiable; 8-bit ones forward-only.

    Example::

        >>> x, w = torch.randn(2, 8, 8, 3), torch.randn(16, 3, 3, 3)
        >>> conv2d(x, w, padding=1, activation="relu").shape
        torch.Size([2, 8, 8, 16])
    """
    if (
        isinstance(x, torch.Tensor)
        and x.dtype == torch.int8
        and isinstance(w, torch.Tensor)
        and w.ndim == 4
        and w.shape[1] * w.shape[2] * w.shape[3] > _checks.INT8_EXACT_K
    ):
        return _conv2d_int8_split(
            x, w, stride, padding, dilation, groups, x_scale, w_scale, bias, activation, out_dtype
        )
    backend = _route(x)
    if backend == "triton":
        from . import _triton_conv

        spec = _checks.check_conv2d(
            x, w, stride, padding, dilation, groups, x_scale, w_scale, bias, activation, out_dtype
        )
        if spec.kind == "float" and _needs_grad(x, w, bias):
            return _apply(_TritonConv2d, x, w, bias, spec)
        return _triton_conv.conv2d_checked(x, w, bias, spec)
    return _BACKEND_MODULES[backend].conv2d(
        x,
        w,
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
        x_scale=x_scale,
        w_scale=w_scale,
        bias=bias,
        activation=activation,
        out_dtype=out_dtype,
    )


def _conv2d_int8_split(
    x: torch.Tensor,
    w: torch.Tensor,
    stride: int | tuple[int, int],
    padding: _checks.Padding,
    dilation: int | tuple[int, int],
    groups: int,
    x_scale: torch.Tensor | None,
    w_scale: torch.Tensor | None,
    bias: torch.Tensor | None,
    activation: str | None,
    out_dtype: torch.dtype | str | None,
) -> torch.Tensor:
    """int8 conv2d whose reduction length KH*KW*C/groups exceeds INT8_EXACT_K: chunks of the
    input channels of every group, each int32-exact on the selected backend, their partial sums
    added in int64, then the epilogue (never a wrapped accumulator)."""
    spec = _checks.check_conv2d(
        x, w, stride, padding, dilation, groups, x_scale, w_scale, bias, activation, out_dtype
    )
    taps = spec.KH * spec.KW
    if taps > _checks.INT8_EXACT_K:
        raise ValueError(
            f"Expected an int8 conv2d kernel of at most {_checks.INT8_EXACT_K} taps (KH*KW), so "
            "that one input channel sums exactly in int32. Received: "
            f"w={_checks.describe(w)} with KH*KW={taps}"
        )
    cg = spec.C // spec.groups
    top, bottom, left, right = spec.padding
    first = torch.arange(spec.groups, device=x.device)[:, None] * cg

    def part(start: int, stop: int) -> torch.Tensor:
        channels = (first + torch.arange(start, stop, device=x.device)[None, :]).reshape(-1)
        return conv2d(
            x.index_select(3, channels),
            w[..., start:stop].contiguous(),
            stride=spec.stride,
            padding=((top, bottom), (left, right)),
            dilation=spec.dilation,
            groups=spec.groups,
            out_dtype=torch.int32,
        )

    # Two or more chunks: the reduction is longer than INT8_EXACT_K.
    chunks = _checks.split_k_for_int32(cg, _checks.INT8_EXACT_K // taps)
    acc = part(*chunks[0]).to(torch.int64)
    for start, stop in chunks[1:]:
        acc.add_(part(start, stop))
    out = _exact_epilogue(
        acc.reshape(-1, spec.OC),
        spec.x_scale,
        spec.w_scale,
        bias,
        spec.activation,
        spec.out_dtype,
        "conv2d",
    )
    return out.reshape(spec.batch, spec.OH, spec.OW, spec.OC)
