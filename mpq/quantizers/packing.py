"""Pack int4 values two per byte (and back) along any axis.

Layout: along `axis`, element `2i` goes to the low nibble and element `2i + 1` to the high nibble of
byte `i` (two's complement nibbles); packed tensors are uint8; odd lengths are zero-padded.
"""

from __future__ import annotations

import torch

from mpq.quantizers import _common as C

__all__ = ["pack_int4", "unpack_int4"]

_INT4_MIN, _INT4_MAX = -8, 7


def pack_int4(q: torch.Tensor, axis: int = -1) -> torch.Tensor:
    """Pack int4 values (held in an integer tensor) two per byte along `axis`.

    `byte[i] = (q[2i] & 0xF) | ((q[2i+1] & 0xF) << 4)` along `axis`; an odd length `n` is padded
    with one 0, so the packed axis has `ceil(n / 2)` bytes. Keep `n` to unpack (`unpack_int4(...,
    size=n)`). The result is uint8 (the bit pattern is what matters; `.view(torch.int8)` is free).

    Args:
        q: integer tensor of shape `S` (int8 from the quantizers) with values in [-8, 7].
        axis: the axis along which pairs are packed.

    Returns:
        uint8 tensor of shape `S` with `S[axis]` replaced by `ceil(S[axis] / 2)`.

    Raises:
        TypeError: `q` is not an integer tensor.
        ValueError: a value lies outside [-8, 7] (synchronises with the device); `axis` out of
            range; `q` is 0-d.

    Example:
        >>> pack_int4(torch.tensor([1, -1, 7], dtype=torch.int8))
        tensor([241,   7], dtype=torch.uint8)
    """
    C.check_int_tensor(q, "q")
    if q.dim() == 0:
        raise ValueError("Expected `q` with at least one dimension. Received: q of shape ()")
    axis = C.normalize_axis(axis, q.dim())
    if q.numel():
        lo, hi = int(q.min()), int(q.max())
        if lo < _INT4_MIN or hi > _INT4_MAX:
            raise ValueError(
                f"Expected int4 values in [{_INT4_MIN}, {_INT4_MAX}]. "
                f"Received: q with values in [{lo}, {hi}]"
            )
    moved = q.movedim(axis, -1).to(torch.int16)
    n = moved.shape[-1]
    if n % 2:
        moved = torch.nn.functional.pad(moved, (0, 1))
    pairs = moved.reshape(*moved.shape[:-1], -1, 2) & 0xF
    packed = (pairs[..., 0] | (pairs[..., 1] << 4)).to(torch.uint8)
    return packed.movedim(-1, axis).contiguous()


def unpack_int4(packed: torch.Tensor, axis: int = -1, size: int | None = None) -> torch.Tensor:
    """Inverse of `pack_int4`: split each byte into two sign-extended int4 values along `axis`.

    Args:
        packed: uint8 (or int8, same bits) tensor of shape `P`.
        axis: the axis that was packed.
        size: the original length `n` of that axis (`2 * P[axis] - 1` or `2 * P[axis]`); None means
            `2 * P[axis]` (even length).

    Returns:
        int8 tensor with values in [-8, 7], shape `P` with `P[axis]` replaced by `size`.

    Example:
        >>> unpack_int4(torch.tensor([241, 7], dtype=torch.uint8), size=3)
        tensor([ 1, -1,  7], dtype=torch.int8)
    """
    C.check_tensor(packed, "packed")
    if packed.dtype not in (torch.uint8, torch.int8):
        raise TypeError(
            "Expected `packed` to be a uint8 (or int8) tensor from pack_int4. "
            f"Received: packed of dtype {packed.dtype}"
        )
    if packed.dim() == 0:
        raise ValueError(
            "Expected `packed` with at least one dimension. Received: packed of shape ()"
        )
    axis = C.normalize_axis(axis, packed.dim())
    n_bytes = packed.shape[axis]
    if size is None:
        size = 2 * n_bytes
    C.check_int_arg(size, "size")
    if size not in (2 * n_bytes - 1, 2 * n_bytes) or size < 0:
        raise ValueError(
            f"Expected `size` in {{{max(2 * n_bytes - 1, 0)}, {2 * n_bytes}}} for {n_bytes} packed "
            f"bytes along axis {axis}. Received: size={size}"
        )
    b = packed.view(torch.uint8).movedim(axis, -1).to(torch.int16)
    # Sign-extend a nibble v in [0, 15]: (v ^ 8) - 8 maps 0..7 -> 0..7 and 8..15 -> -8..-1.
    low = ((b & 0xF) ^ 8) - 8
    high = (((b >> 4) & 0xF) ^ 8) - 8
    values = torch.stack((low, high), dim=-1).reshape(*b.shape[:-1], 2 * n_bytes)
    return values[..., :size].to(torch.int8).movedim(-1, axis).contiguous()
