"""Number formats: one table of every format mpq knows, and exact conversions between them.

`get` resolves names and dtypes to a `Format`; `to_numpy` / `from_numpy` move bits between torch
and numpy exactly; `encode` rounds (nearest-even, saturating) and `decode` reads values back.

Example:
    >>> import torch
    >>> from mpq import dtypes
    >>> fmt = dtypes.get("float8_e4m3fn")
    >>> q = dtypes.encode(torch.tensor([500.0, 0.3]), fmt)
    >>> q.dtype, dtypes.decode(q).tolist()
    (torch.float8_e4m3fn, [448.0, 0.3125])
"""

from mpq.dtypes._convert import decode, from_numpy, to_numpy
from mpq.dtypes._encode import encode
from mpq.dtypes._formats import FORMATS, DTypeLike, Format, format_table, get, names

__all__ = [
    "FORMATS",
    "DTypeLike",
    "Format",
    "decode",
    "encode",
    "format_table",
    "from_numpy",
    "get",
    "names",
    "to_numpy",
]
