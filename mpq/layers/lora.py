"""LoRA (low-rank adaptation) for the weighted layers, and the call hooks QAT uses.

`LoRAMixin` gives Dense, EinsumDense, Conv1D, Conv2D and Embedding ``enable_lora(rank,
lora_alpha)`` and ``merge_lora()``; the layers ask it for the kernel (and inputs) to use in
``call``. Embedding adapts its ``embeddings`` table (factors ``lora_embeddings_a`` /
``lora_embeddings_b``, as in Keras 3) and overrides ``lora_output`` with a row lookup.

Semantics (Keras 3): ``lora_kernel_a`` has shape ``kernel.shape[:-1] + (rank,)`` (he_uniform),
``lora_kernel_b`` ``(rank, kernel.shape[-1])`` (zeros), both trainable float32; the kernel is
frozen; the layer computes with ``kernel + (lora_alpha / rank) * (A @ B)``. On a quantized layer
(kernel stored as int8 / packed int4 / float8), the low-rank term is applied to the inputs,
``(lora_alpha / rank) * op(x, A @ B)`` with the layer's own linear op, and added before the bias
and activation. This module imports no layer (the layers import it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import torch

from mpq import initializers
from mpq._errors import MAX_SIZE
from mpq._errors import describe as _describe
from mpq.layers.variables import Variable

__all__ = ["LoRAMixin"]


def check_rank(rank: Any, name: str = "rank") -> int:
    if not isinstance(rank, int) or isinstance(rank, bool) or not 0 < rank <= MAX_SIZE:
        raise ValueError(
            f"Expected `{name}` to be a positive int <= {MAX_SIZE}. "
            f"Received: {name}={_describe(rank)}"
        )
    return rank


def check_alpha(alpha: Any) -> float | None:
    if alpha is None:
        return None
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not alpha > 0:
        raise ValueError(
            f"Expected `lora_alpha` to be a positive number or None. "
            f"Received: lora_alpha={_describe(alpha)}"
        )
    return alpha


if TYPE_CHECKING:
    from mpq.layers.base import Layer

    _MixinBase = Layer
else:
    _MixinBase = object


class LoRAMixin(_MixinBase):
    """LoRA and QAT hooks for a layer with a ``kernel`` whose last axis is the output axis.

    The layer implements ``_linear(inputs, kernel)``: its op without bias or activation (the
    layout of ``call``'s inputs), used for the low-rank term on quantized layers. In ``call``
    it reads ``kernel, inputs = self._call_kernel_and_inputs(self.kernel, inputs)`` when
    ``self._call_hooks`` is true (a class attribute False: nothing is paid without LoRA/QAT).
    """

    _call_hooks = False
    lora_enabled = False
    _lora_target = "kernel"
    """The adapted variable: factors ``lora_{target}_a`` / ``_b``, checked against
    ``{target}_constraint``, regularized with ``{target}_regularizer`` (as in Keras 3)."""
    _lora_autocast = True
    """Whether the factors read in the compute dtype inside ``call`` (Embedding: False, as
    Keras' Embedding does not autocast)."""
    lora_rank: int | None
    lora_alpha: float | None
    if TYPE_CHECKING:  # provided by the layers that mix LoRA in
        kernel_constraint: Any

        def _linear(self, inputs: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor: ...

    _qat: Any = None  # QAT's per-layer state while prepared (mpq.training.qat)

    # ------------------------------------------------------------------ public
    def enable_lora(
        self,
        rank: int,
        lora_alpha: float | None = None,
        a_initializer: Any = "he_uniform",
        b_initializer: Any = "zeros",
    ) -> None:
        """Freeze the kernel and add trainable float32 ``lora_kernel_a`` / ``lora_kernel_b``
        (Embedding: the table, ``lora_embeddings_a [input_dim, rank]`` /
        ``lora_embeddings_b [rank, output_dim]``), regularized like the kernel (as in Keras 3).

        ``kernel [..., out]`` -> ``A [..., rank]``, ``B [rank, out]``; the layer then computes
        with ``kernel + (lora_alpha / rank) * A @ B`` (``lora_alpha`` defaults to ``rank``).
        Works on float and quantized (int8, int4, float8) layers. Raises ValueError if the
        layer is not built, LoRA is already enabled, or the kernel has a constraint.

        >>> from mpq.layers import Dense
        >>> layer = Dense(4); _ = layer(torch.ones(2, 3)); layer.enable_lora(2)
        >>> [w.name for w in layer.trainable_weights]
        ['bias', 'lora_kernel_a', 'lora_kernel_b']
        """
        if not self.built:
            raise ValueError(
                f"Cannot enable LoRA on layer {self.name!r}: it is not built yet. Call it on an "
                "input or `build(input_shape)` first. Received: built=False"
            )
        if self.lora_enabled:
            raise ValueError(
                f"LoRA is already enabled on layer {self.name!r}. "
                f"Received: rank={rank!r} (enabled with rank={self.lora_rank})"
            )
        self._create_lora_weights(rank, lora_alpha, a_initializer, b_initializer)

    def merge_lora(self) -> None:
        """Fold ``(lora_alpha / rank) * A @ B`` into the kernel and remove A and B (for export).

        Float layers: ``kernel <- kernel + scaling * A @ B`` computed in float32 and written in
        the variable dtype; the kernel's trainability comes back. Quantized layers: the kernel is
        dequantized, the update added, and the sum quantized again with the layer's scheme
        (``requantize``): lossy, by the quantization error of the merged kernel.
        """
        if not self.lora_enabled:
            raise ValueError(
                f"Cannot merge LoRA on layer {self.name!r}: LoRA is not enabled. "
                "Received: lora_enabled=False"
            )
        with torch.no_grad():
            delta = self._lora_delta(torch.float32)
            scheme = self.quantization_scheme
            if scheme is None:
                kernel = cast(torch.nn.Parameter, self._parameters[self._lora_target])
                kernel.copy_((kernel.detach().float() + delta).to(kernel.dtype))
            else:
                scheme.requantize(self, delta)
        merged = self._parameters.get(self._lora_target)
        was_trainable = self.__dict__.get("_lora_kernel_was_trainable", False)
        if isinstance(merged, Variable) and merged.is_floating_point() and was_trainable:
            merged.trainable = self.trainable
        for name in self._lora_names():
            delattr(self, name)
        d = self.__dict__
        d["lora_enabled"] = False
        d["lora_rank"] = None
        d["lora_alpha"] = None
        self._refresh_call_hooks()
        self._update_cast_dtypes()

    # ------------------------------------------------------------------ internals
    def _init_lora(self, lora_rank: Any, lora_alpha: Any) -> None:
        """Check and store the constructor's ``lora_rank`` / ``lora_alpha`` (LoRA is enabled
        with them at the end of ``build``, see :meth:`_build_lora`)."""
        self.lora_rank = None if lora_rank is None else check_rank(lora_rank, "lora_rank")
        self.lora_alpha = check_alpha(lora_alpha)

    def _build_lora(self) -> None:
        """At the end of ``build``: enable LoRA if the constructor asked for it."""
        if self.lora_rank:
            self._create_lora_weights(self.lora_rank, self.lora_alpha)

    def _create_lora_weights(
        self,
        rank: Any,
        lora_alpha: Any,
        a_initializer: Any = "he_uniform",
        b_initializer: Any = "zeros",
    ) -> None:
        rank = check_rank(rank)
        lora_alpha = check_alpha(lora_alpha)
        target = self._lora_target
        constraint = getattr(self, f"{target}_constraint", None)
        if constraint is not None:
            raise ValueError(
                f"LoRA is incompatible with {target} constraints (layer {self.name!r}). "
                f"Received: {target}_constraint={constraint!r}"
            )
        shape = self._lora_kernel_shape()
        kernel = self._parameters.get(target)
        d = self.__dict__
        d["_lora_kernel_was_trainable"] = kernel is not None and kernel.requires_grad
        if isinstance(kernel, Variable):
            kernel.trainable = False
        device = next((p.device for p in self._parameters.values() if p is not None), None)
        regularizer = getattr(self, f"{target}_regularizer", None)
        a_name, b_name = self._lora_names()
        a = self.add_weight(
            name=a_name,
            shape=(*shape[:-1], rank),
            initializer=initializers.get(a_initializer),
            dtype="float32",
            autocast=self._lora_autocast,
            regularizer=regularizer,
        )
        setattr(self, a_name, a)
        b = self.add_weight(
            name=b_name,
            shape=(rank, shape[-1]),
            initializer=initializers.get(b_initializer),
            dtype="float32",
            autocast=self._lora_autocast,
            regularizer=regularizer,
        )
        setattr(self, b_name, b)
        if device is not None and device.type != "cpu":
            self.to(device)  # torch's own move (the rest of the layer is already there)
        d["lora_rank"] = rank
        d["lora_alpha"] = rank if lora_alpha is None else lora_alpha
        d["lora_enabled"] = True
        self._refresh_call_hooks()

    def _lora_names(self) -> tuple[str, str]:
        """The factors' names: ``lora_kernel_a``/``_b`` (Embedding: ``lora_embeddings_a``/``_b``)."""
        return f"lora_{self._lora_target}_a", f"lora_{self._lora_target}_b"

    def _lora_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(A, B)`` read for the running call (through autocast where the layer has it)."""
        a_name, b_name = self._lora_names()
        a: torch.Tensor = getattr(self, a_name)
        b: torch.Tensor = getattr(self, b_name)
        return a, b

    def _lora_scaling(self) -> float:
        """``lora_alpha / lora_rank`` (LoRA enabled)."""
        return cast(float, self.lora_alpha) / cast(int, self.lora_rank)

    def _lora_kernel_shape(self) -> tuple[int, ...]:
        """The float kernel's shape (a quantized layer may store it packed)."""
        scheme = self.quantization_scheme
        shape = None if scheme is None else scheme.kernel_shape()
        if shape is not None:
            return tuple(shape)
        return tuple(cast(torch.nn.Parameter, self._parameters[self._lora_target]).shape)

    def _lora_delta(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """``(lora_alpha / rank) * A @ B`` with the kernel's shape (read through autocast)."""
        a, b = self._lora_factors()
        if dtype is not None:
            a, b = a.to(dtype), b.to(dtype)
        scaling = self._lora_scaling()
        lead = a.shape[:-1]
        ab = torch.mm(a.reshape(-1, a.shape[-1]), b).reshape(*lead, b.shape[-1])
        return ab * scaling if scaling != 1 else ab

    def _refresh_call_hooks(self) -> None:
        self._call_hooks = bool(self.lora_enabled) or self._qat is not None

    def _call_kernel_and_inputs(
        self, kernel: torch.Tensor, inputs: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The kernel and inputs ``call`` computes with: QAT fake quantization, then LoRA."""
        qat = self._qat
        if qat is not None:
            kernel, inputs = qat.apply(self, kernel, inputs)
        if self.lora_enabled:
            kernel = kernel + self._lora_delta().to(kernel.dtype)
        return kernel, inputs

    def lora_output(self, inputs: torch.Tensor) -> torch.Tensor | None:
        """The low-rank term on the input path, ``op(inputs, scaling * A @ B)``, or None without
        LoRA: a quantized layer's scheme adds it before bias and activation."""
        if not self.lora_enabled:
            return None
        delta = self._lora_delta()
        return self._linear(inputs, delta.to(inputs.dtype))
