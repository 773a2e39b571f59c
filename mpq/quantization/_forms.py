"""How each weighted layer's kernel maps to the matrix the quantized kernels multiply.

Every supported kernel is viewed as a matrix ``[*lead, N, K]`` (output channels N, reduction K
last, contiguous: the K-major layout of ``mpq.kernels``) and every input as rows ``[*lead, M, K]``.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["ConvForm", "EinsumForm", "EmbeddingForm", "form_of"]

_EQUATION = re.compile(r"([a-zA-Z.]+),([a-zA-Z]+)->([a-zA-Z.]+)")


def _prod(sizes: Any) -> int:
    return int(math.prod(sizes))


@dataclass(frozen=True)
class EinsumForm:
    """Dense (``"...k,kn->...n"``) and EinsumDense kernels as ``[S, N, K]`` matrices.

    Letters of the equation: S = shared by input, kernel and output (one matrix per index, e.g.
    attention heads; no S: the matrix is 2-D ``[N, K]``), C = contracted (K = prod of their
    sizes), N = kernel letters in the output, B = input letters in the output (rows, M), X =
    input-only letters (summed before the matmul). Kernel-only letters are not supported.
    """

    equation: str
    kernel_shape: tuple[int, ...]
    in_spec: str
    w_spec: str
    out_spec: str
    S: str
    C: str
    N: str
    B: str
    X: str

    @classmethod
    def create(cls, equation: str, kernel_shape: tuple[int, ...]) -> EinsumForm:
        match = _EQUATION.fullmatch(equation.replace(" ", ""))
        if match is None:
            raise ValueError(f"Expected an einsum equation. Received: equation={equation!r}")
        in_spec, w_spec, out_spec = match.groups()
        # An ellipsis stands for any number of batch-like axes: it becomes one letter ".",
        # flattened in to_rows and expanded again in from_rows.
        in_spec, out_spec = in_spec.replace("...", "."), out_spec.replace("...", ".")
        w_only = [c for c in w_spec if c not in in_spec and c not in out_spec]
        if w_only or len(set(in_spec)) != len(in_spec) or len(set(w_spec)) != len(w_spec):
            raise NotImplementedError(
                "Expected an einsum equation whose kernel letters all appear in the input or the "
                f"output, without repeated letters, to quantize. Received: equation={equation!r}"
            )
        return cls(
            equation=equation,
            kernel_shape=tuple(int(s) for s in kernel_shape),
            in_spec=in_spec,
            w_spec=w_spec,
            out_spec=out_spec,
            S="".join(c for c in in_spec if c in w_spec and c in out_spec),
            C="".join(c for c in in_spec if c in w_spec and c not in out_spec),
            N="".join(c for c in w_spec if c not in in_spec),
            B="".join(c for c in in_spec if c in out_spec and c not in w_spec),
            X="".join(c for c in in_spec if c not in w_spec and c not in out_spec),
        )

    def _size(self, c: str) -> int:
        return self.kernel_shape[self.w_spec.index(c)]

    @property
    def matrix_shape(self) -> tuple[int, ...]:
        """``[S, N, K]``, or ``[N, K]`` without shared letters."""
        nk = (_prod(self._size(c) for c in self.N), _prod(self._size(c) for c in self.C))
        return ((_prod(self._size(c) for c in self.S),) if self.S else ()) + nk

    @property
    def stored_shape(self) -> tuple[int, ...]:
        return self.matrix_shape

    @property
    def channel_axes(self) -> int:
        """Leading axes of the stored kernel that index output channels (S and N)."""
        return len(self.matrix_shape) - 1

    def to_stored(self, w: torch.Tensor) -> torch.Tensor:
        return self.to_matrix(w)

    def to_matrix(self, w: torch.Tensor) -> torch.Tensor:
        """Layer kernel -> contiguous matrix (differentiable)."""
        order = self.S + self.N + self.C
        perm = [self.w_spec.index(c) for c in order]
        return w.permute(perm).reshape(self.matrix_shape).contiguous()

    def from_matrix(self, m: torch.Tensor) -> torch.Tensor:
        """Matrix -> layer kernel (inverse of ``to_matrix``)."""
        order = self.S + self.N + self.C
        m = m.reshape([self._size(c) for c in order])
        return m.permute([order.index(c) for c in self.w_spec])

    @functools.cached_property
    def _plain(self) -> tuple[int, tuple[int, ...]] | None:
        """``(K, sizes of the contracted letters)`` when input rows and output rows need no
        permutation (Dense: the batch letters, then the contracted ones in the input, then the
        kernel's in the output; no S, no X); None otherwise. Computed once per form."""
        if self.S or self.X or self.in_spec != self.B + self.C or self.out_spec != self.B + self.N:
            return None
        return self.matrix_shape[-1], tuple(self._size(c) for c in self.C)

    def to_rows(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[Any, ...]]:
        """Input -> ``[S, M, K]`` rows (S = 1 without shared letters) and what ``from_rows``
        needs to restore the output shape."""
        plain = self._plain
        if (
            plain is not None
            and (x.dim() == len(self.in_spec) or ("." in self.in_spec and x.dim() > len(self.B)))
            and tuple(x.shape[x.dim() - len(self.C) :]) == plain[1]
        ):
            # Same rows as the general path below: only reshapes, no permutation.
            return x.reshape(1, -1, plain[0]), (None, x.shape[: x.dim() - len(self.C)])
        spec = self.in_spec
        ell: tuple[int, ...] = ()
        if "." in spec:
            p = spec.index(".")
            n = x.dim() - (len(spec) - 1)
            ell = tuple(x.shape[p : p + n])
            x = x.reshape(*x.shape[:p], _prod(ell), *x.shape[p + n :])
        if self.X:
            x = x.sum(dim=[spec.index(c) for c in self.X])
            spec = "".join(c for c in spec if c not in self.X)
        order = self.S + self.B + self.C
        perm = [spec.index(c) for c in order]
        if perm != list(range(len(perm))):
            x = x.permute(perm)
        b_sizes = tuple(x.shape[len(self.S) : len(self.S) + len(self.B)])
        s = _prod(self._size(c) for c in self.S)
        k = _prod(self._size(c) for c in self.C)
        return x.reshape(s, _prod(b_sizes), k), (b_sizes, ell)

    def from_rows(self, y: torch.Tensor, meta: tuple[Any, ...]) -> torch.Tensor:
        """``[S, M, N]`` -> output in the equation's output order."""
        b_sizes, ell = meta
        if b_sizes is None:  # the plain path of to_rows: ``ell`` holds the leading shape
            return y.reshape(*ell, *(self._size(c) for c in self.N))
        order = self.S + self.B + self.N
        y = y.reshape(
            [self._size(c) for c in self.S] + list(b_sizes) + [self._size(c) for c in self.N]
        )
        perm = [order.index(c) for c in self.out_spec]
        if perm != list(range(len(perm))):
            y = y.permute(perm)
        if "." in self.out_spec:
            p = self.out_spec.index(".")
            y = y.reshape(*y.shape[:p], *ell, *y.shape[p + 1 :])
        return y


@dataclass(frozen=True)
class ConvForm:
    """Conv1D/Conv2D kernels ``[*kernel_size, C_in/groups, C_out]`` as ``[C_out, K]`` matrices,
    K = prod(kernel_size) * C_in/groups flattened in the order of ``mpq.kernels.conv2d``'s
    ``[OC, KH, KW, C/groups]`` weights (Conv1D: ``[OC, KW, C/groups]``)."""

    kernel_shape: tuple[int, ...]

    channel_axes = 1

    @property
    def stored_shape(self) -> tuple[int, ...]:
        return (self.kernel_shape[-1], *self.kernel_shape[:-1])

    @property
    def matrix_shape(self) -> tuple[int, int]:
        return self.kernel_shape[-1], _prod(self.kernel_shape[:-1])

    def to_stored(self, w: torch.Tensor) -> torch.Tensor:
        return w.permute(w.dim() - 1, *range(w.dim() - 1)).contiguous()

    def from_stored(self, w: torch.Tensor) -> torch.Tensor:
        return w.permute(*range(1, w.dim()), 0)

    def to_matrix(self, w: torch.Tensor) -> torch.Tensor:
        return self.to_stored(w).reshape(self.matrix_shape)

    def from_matrix(self, m: torch.Tensor) -> torch.Tensor:
        return self.from_stored(m.reshape(self.stored_shape))


@dataclass(frozen=True)
class EmbeddingForm:
    """Embedding tables ``[input_dim, output_dim]``: one row per token is one "channel"."""

    kernel_shape: tuple[int, int]
    channel_axes = 1

    @property
    def matrix_shape(self) -> tuple[int, int]:
        return self.kernel_shape

    @property
    def stored_shape(self) -> tuple[int, int]:
        return self.kernel_shape

    def to_stored(self, w: torch.Tensor) -> torch.Tensor:
        return w.contiguous()

    def to_matrix(self, w: torch.Tensor) -> torch.Tensor:
        return w.contiguous()

    def from_matrix(self, m: torch.Tensor) -> torch.Tensor:
        return m


def form_of(layer: Any, kernel_shape: tuple[int, ...]) -> Any:
    """The form of ``layer``'s kernel of ``kernel_shape``."""
    from mpq.layers import Conv1D, Conv2D, Dense, EinsumDense, Embedding

    if isinstance(layer, Dense):
        return EinsumForm.create("...k,kn->...n", kernel_shape)
    if isinstance(layer, EinsumDense):
        return EinsumForm.create(layer.equation, kernel_shape)
    if isinstance(layer, (Conv1D, Conv2D)):
        return ConvForm(tuple(kernel_shape))
    if isinstance(layer, Embedding):
        rows, dim = kernel_shape
        return EmbeddingForm((rows, dim))
    raise NotImplementedError(
        f"Expected a Dense, EinsumDense, Conv1D, Conv2D or Embedding layer. "
        f"Received: {type(layer).__name__}"
    )
