"""mpq.dtypes: the table against ml_dtypes / numpy / torch and against an enumeration of codes,
`get`, and bit-exact torch <-> numpy round trips on every code of every 8- and 16-bit format."""

from __future__ import annotations

import pickle
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
import torch
from hypothesis import given

from mpq import dtypes
from mpq.testing import device
from mpq.testing import strategies as st_mpq
from tests.dtypes._helpers import all_codes, bits_of, values_of

ALL = dtypes.names()
FLOATS = dtypes.names("float")
SMALL = tuple(n for n in ALL if dtypes.get(n).bits <= 16)  # exhaustively enumerable
EXPECTED_NAMES = {
    "float64", "float32", "float16", "bfloat16", "float8_e4m3fn", "float8_e5m2",
    "float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e8m0fnu", "float6_e2m3fn", "float6_e3m2fn",
    "float4_e2m1fn", "int32", "int8", "uint8", "int4", "uint4",
}  # fmt: skip


# ---------------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------------


def test_names_cover_the_issue_list_in_table_order():
    assert set(ALL) == EXPECTED_NAMES
    assert len(ALL) == len(EXPECTED_NAMES)
    assert tuple(dtypes.FORMATS) == ALL
    assert dtypes.names("float") + dtypes.names("int") + dtypes.names("uint") != ()
    assert set(dtypes.names("float")) | set(dtypes.names("int")) | set(dtypes.names("uint")) == (
        EXPECTED_NAMES
    )
    assert dtypes.names("uint") == ("uint8", "uint4")


def test_formats_mapping_is_read_only():
    with pytest.raises(TypeError):
        dtypes.FORMATS["float32"] = dtypes.get("float16")  # type: ignore[index]
    fmt = dtypes.get("float32")
    with pytest.raises(AttributeError):
        fmt.max = 1.0  # type: ignore[misc]


@pytest.mark.parametrize("name", FLOATS)
def test_float_constants_match_ml_dtypes_finfo(name):
    fmt = dtypes.get(name)
    fi = ml_dtypes.finfo(fmt.numpy_dtype)
    assert fmt.bits == fi.bits
    assert fmt.max == float(fi.max)
    assert fmt.smallest_normal == float(fi.smallest_normal)
    assert fmt.smallest_subnormal == float(fi.smallest_subnormal)
    assert fmt.eps == float(fi.eps)
    assert fmt.mantissa_bits == fi.nmant
    assert fmt.exponent_bits == fi.nexp
    if fmt.is_signed:
        assert fmt.min == float(fi.min) == -fmt.max
    else:  # e8m0: ml_dtypes' finfo.min is its lowest value
        assert fmt.min == float(fi.min) == 2.0**-127


@pytest.mark.parametrize("name", [n for n in ALL if dtypes.get(n).kind != "float"])
def test_integer_constants_match_iinfo(name):
    fmt = dtypes.get(name)
    ii = ml_dtypes.iinfo(fmt.numpy_dtype)
    assert (fmt.min, fmt.max, fmt.bits) == (int(ii.min), int(ii.max), ii.bits)
    assert isinstance(fmt.max, int) and isinstance(fmt.min, int)
    assert fmt.eps is fmt.smallest_normal is fmt.smallest_subnormal is None
    assert not (fmt.has_inf or fmt.has_nan or fmt.has_negative_zero or fmt.is_floating)
    assert fmt.is_signed == (fmt.kind == "int")


@pytest.mark.parametrize("name", [n for n in SMALL if dtypes.get(n).kind == "float"])
def test_float_constants_match_an_enumeration_of_every_code(name):
    """The definition, independent of finfo: read every code and measure the format."""
    fmt = dtypes.get(name)
    codes = all_codes(fmt)
    values = values_of(codes)
    finite = values[np.isfinite(values)]
    positive = finite[finite > 0]
    assert fmt.max == finite.max()
    assert fmt.min == finite.min()
    assert fmt.smallest_subnormal == positive.min()
    assert fmt.eps == positive[positive > 1].min() - 1
    assert fmt.has_inf == bool(np.isinf(values).any())
    assert fmt.has_nan == bool(np.isnan(values).any())
    assert fmt.has_negative_zero == bool(((values == 0) & np.signbit(values)).any())
    # Smallest normal: the smallest value whose code has a non-zero exponent field.
    raw = bits_of(codes, fmt).astype(np.int64)
    exponent_field = (raw >> fmt.mantissa_bits) & (2**fmt.exponent_bits - 1)
    normal = np.isfinite(values) & (values > 0) & (exponent_field > 0)
    if fmt.mantissa_bits == 0:  # e8m0: every code is a normal power of two, code 0 included
        normal = np.isfinite(values)
    assert fmt.smallest_normal == values[normal].min()
    # The canonical NaN code is a NaN of the format.
    if fmt.has_nan:
        assert np.isnan(values[fmt.nan_code])
    else:
        assert fmt.nan_code is None


def test_fnuz_eps_trap_the_table_is_the_source_of_truth():
    """torch.finfo(torch.float8_e5m2fnuz).eps is 0.125 in torch <= 2.13; the format's eps is
    0.25 (two mantissa bits: 1.0 is followed by 1.25)."""
    fmt = dtypes.get("float8_e5m2fnuz")
    assert fmt.eps == 0.25
    one = dtypes.encode(np.array([1.0], np.float32), fmt)
    next_code = bits_of(one, fmt) + 1
    assert values_of(next_code.view(fmt.numpy_dtype))[0] == 1.25


@pytest.mark.parametrize("name", [n for n in ALL if dtypes.get(n).torch_dtype is not None])
def test_constants_match_torch_finfo_except_the_known_trap(name):
    fmt = dtypes.get(name)
    if fmt.kind != "float":
        ii = torch.iinfo(fmt.torch_dtype)
        assert (fmt.min, fmt.max, fmt.bits) == (ii.min, ii.max, ii.bits)
        return
    fi = torch.finfo(fmt.torch_dtype)
    assert (fmt.max, fmt.min, fmt.smallest_normal) == (fi.max, fi.min, fi.smallest_normal)
    if name != "float8_e5m2fnuz":
        assert fmt.eps == fi.eps


@pytest.mark.parametrize("name", ALL)
def test_dtypes_and_containers_are_consistent(name):
    fmt = dtypes.get(name)
    assert fmt.name == name and repr(fmt) == f'<Format "{name}">'
    assert fmt.is_floating == (fmt.kind == "float")
    if fmt.torch_dtype is not None:
        assert fmt.container == fmt.torch_dtype
        assert fmt.container.itemsize * 8 == fmt.bits
        assert fmt.numpy_dtype.itemsize == fmt.container.itemsize
    else:
        assert fmt.bits < 8 or name == "float8_e8m0fnu"
        assert fmt.container == (torch.int8 if fmt.kind == "int" else torch.uint8)
    assert fmt.numpy_dtype.itemsize * 8 >= fmt.bits
    assert pickle.loads(pickle.dumps(fmt)) is fmt


def test_torch_dtypes_of_the_table():
    expected = {
        "bfloat16": torch.bfloat16,
        "float8_e4m3fn": torch.float8_e4m3fn,
        "float8_e5m2fnuz": torch.float8_e5m2fnuz,
        "float8_e8m0fnu": torch.float8_e8m0fnu,
        "int4": None,
        "uint4": None,
        "float6_e2m3fn": None,
        "float4_e2m1fn": None,
    }
    assert {n: dtypes.get(n).torch_dtype for n in expected} == expected
    assert dtypes.get("int4").container == torch.int8
    assert dtypes.get("float4_e2m1fn").container == torch.uint8


@device.requires_triton
@pytest.mark.parametrize("name", [n for n in ALL if dtypes.get(n).triton_dtype is not None])
def test_triton_names_are_triton_dtypes(name):
    import triton.language as tl

    fmt = dtypes.get(name)
    tl_dtype = tl.str_to_ty(fmt.triton_dtype, None)  # Triton's own signature-type names
    assert tl_dtype.primitive_bitwidth == fmt.bits
    assert tl_dtype.is_int_signed() == (fmt.kind == "int")
    assert tl_dtype.is_floating() == fmt.is_floating


def test_format_table_is_in_the_docs():
    table = dtypes.format_table()
    assert table.count("\n") == len(ALL) + 2
    for name in ALL:
        assert f"| `{name}` |" in table
    assert "| `float8_e5m2fnuz` | 8 | float |" in table
    docs = Path(__file__).resolve().parents[2] / "docs" / "formats.md"
    assert table in docs.read_text(), "regenerate the table in docs/formats.md"


# ---------------------------------------------------------------------------------------------
# get
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_get_resolves_every_spelling(name):
    fmt = dtypes.get(name)
    assert dtypes.get(fmt) is fmt
    assert dtypes.get(fmt.numpy_dtype) is fmt
    assert dtypes.get(fmt.numpy_dtype.type) is fmt
    if fmt.torch_dtype is not None:
        assert dtypes.get(fmt.torch_dtype) is fmt


def test_get_maps_torch_int4_dtypes_and_numpy_aliases():
    assert dtypes.get(torch.int4) is dtypes.get("int4")
    assert dtypes.get(torch.uint4) is dtypes.get("uint4")
    assert dtypes.get(np.dtype("f4")) is dtypes.get("float32")
    assert dtypes.get(ml_dtypes.bfloat16) is dtypes.get("bfloat16")


@pytest.mark.parametrize("bad", [3, None, 1.5, ["float32"], float, b"float32"])
def test_get_rejects_other_types(bad):
    with pytest.raises(TypeError, match=r"Received: identifier=.*\(of type"):
        dtypes.get(bad)


@pytest.mark.parametrize(
    ("bad", "shown"),
    [
        ("fp8", "'fp8'"),
        ("Float32", "'Float32'"),
        (torch.complex64, "torch.complex64"),
        (torch.int16, "torch.int16"),
        (np.dtype("int16"), "int16"),
        (np.complex64, "complex64"),
    ],
)
def test_get_rejects_unknown_formats_and_lists_valid_ones(bad, shown):
    with pytest.raises(ValueError, match="Received: identifier=") as info:
        dtypes.get(bad)
    assert shown in str(info.value)
    if isinstance(bad, str):
        assert "float8_e4m3fn" in str(info.value)  # lists the valid names


def test_names_rejects_unknown_kind():
    with pytest.raises(ValueError, match=r"Received: kind='complex'"):
        dtypes.names("complex")


# ---------------------------------------------------------------------------------------------
# torch <-> numpy, exhaustively
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SMALL)
def test_round_trip_numpy_torch_numpy_on_every_code(name):
    fmt = dtypes.get(name)
    codes = all_codes(fmt)
    t = dtypes.from_numpy(codes)
    assert t.dtype == fmt.container and t.shape == codes.shape
    back = dtypes.to_numpy(t, fmt)
    assert back.dtype == fmt.numpy_dtype
    np.testing.assert_array_equal(bits_of(back, fmt), bits_of(codes, fmt))


@pytest.mark.parametrize("name", SMALL)
def test_round_trip_torch_numpy_torch_on_every_code(name):
    fmt = dtypes.get(name)
    if fmt.torch_dtype is not None:
        raw = torch.arange(2**fmt.bits, dtype=torch.int64).to(
            torch.uint8 if fmt.bits == 8 else torch.int16
        )
        t = raw.view(fmt.torch_dtype)
    elif fmt.kind == "float":
        t = torch.arange(2**fmt.bits, dtype=torch.uint8)
    else:
        t = torch.arange(int(fmt.min), int(fmt.max) + 1).to(fmt.container)
    back = dtypes.from_numpy(dtypes.to_numpy(t, fmt), fmt)
    assert back.dtype == t.dtype
    assert torch.equal(back.view(torch.uint8), t.view(torch.uint8))


@pytest.mark.parametrize("name", [n for n in SMALL if dtypes.get(n).torch_dtype is not None])
def test_torch_and_numpy_agree_on_the_value_of_every_code(name):
    fmt = dtypes.get(name)
    codes = all_codes(fmt)
    np_values = values_of(codes)
    torch_values = dtypes.from_numpy(codes).to(torch.float64).numpy()
    np.testing.assert_array_equal(torch_values, np_values)  # NaN == NaN here
    # Signs agree everywhere but on NaN (torch reads the fnuz NaN 0x80 as +NaN, ml_dtypes as -NaN).
    signed = ~np.isnan(np_values)
    np.testing.assert_array_equal(np.signbit(torch_values[signed]), np.signbit(np_values[signed]))


@pytest.mark.parametrize("name", ["float32", "float64", "int32"])
def test_round_trip_wide_formats_on_special_and_random_bits(name):
    fmt = dtypes.get(name)
    rng = np.random.default_rng(0)
    width = fmt.code_dtype
    special = {
        "float32": [0, 0x80000000, 0x7F800000, 0xFF800000, 0x7FC00000, 0x7F800001, 0xFFFFFFFF, 1],
        "float64": [0, 1 << 63, 0x7FF0000000000000, 0x7FF0000000000001, (1 << 64) - 1, 1],
        "int32": [0, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF],
    }[name]
    info = np.iinfo(width)
    raw = np.concatenate(
        [
            np.array(special, dtype=width),
            rng.integers(0, info.max, 4096, dtype=width, endpoint=True),
        ]
    )
    a = raw.view(fmt.numpy_dtype)
    back = dtypes.to_numpy(dtypes.from_numpy(a), fmt)
    np.testing.assert_array_equal(bits_of(back, fmt), raw)


def test_conversions_keep_shape_and_copy():
    a = np.arange(24, dtype=np.float32).reshape(2, 3, 4).astype(ml_dtypes.bfloat16)
    view = a.transpose(2, 0, 1)[::-1]  # non-contiguous, negative strides
    t = dtypes.from_numpy(view)
    assert t.shape == (4, 2, 3) and t.dtype == torch.bfloat16
    np.testing.assert_array_equal(dtypes.to_numpy(t).astype(np.float32), view.astype(np.float32))
    t[0, 0, 0] = 100.0  # the tensor is a copy, so the array is untouched
    assert view[0, 0, 0] == 3.0
    scalar = dtypes.from_numpy(ml_dtypes.float8_e4m3fn(1.5))
    assert scalar.shape == () and scalar.item() == 1.5
    frozen = np.ones(3, dtype=np.float32)
    frozen.flags.writeable = False
    assert dtypes.from_numpy(frozen).tolist() == [1.0, 1.0, 1.0]  # no non-writable warning
    requires_grad = torch.ones(2, requires_grad=True)
    assert dtypes.to_numpy(requires_grad).tolist() == [1.0, 1.0]
    strided = torch.arange(12, dtype=torch.float16).reshape(3, 4).t()
    np.testing.assert_array_equal(dtypes.to_numpy(strided), strided.numpy())


def test_sub_byte_codes_are_canonical_from_numpy():
    fmt = dtypes.get("float4_e2m1fn")
    a = np.array([0x17, 0xF2], dtype=np.uint8).view(fmt.numpy_dtype)  # junk in the high bits
    assert dtypes.from_numpy(a).tolist() == [0x7, 0x2]


@pytest.mark.parametrize(
    ("name", "values", "shown"),
    [
        ("int4", [1, 8], "t[(1,)] = 8"),
        ("int4", [-9], "t[(0,)] = -9"),
        ("uint4", [16], "t[(0,)] = 16"),
        ("float6_e2m3fn", [64], "t[(0,)] = 64"),
        ("float4_e2m1fn", [3, 16], "t[(1,)] = 16"),
    ],
)
def test_to_numpy_rejects_out_of_range_container_values(name, values, shown):
    fmt = dtypes.get(name)
    t = torch.tensor(values, dtype=fmt.container)
    with pytest.raises(ValueError, match="Received: ") as info:
        dtypes.to_numpy(t, fmt)
    assert shown in str(info.value) and name in str(info.value)


def test_conversion_errors_name_what_was_received():
    with pytest.raises(TypeError, match=r"Received: t=\[1.0\] \(of type list\)"):
        dtypes.to_numpy([1.0])
    with pytest.raises(TypeError, match=r"Received: t=a torch.Tensor of dtype torch.float32"):
        dtypes.to_numpy(torch.ones(2), "bfloat16")
    with pytest.raises(TypeError, match=r"Received: a=a numpy array of dtype float32"):
        dtypes.from_numpy(np.ones(2, np.float32), "bfloat16")
    with pytest.raises(TypeError, match=r"Received: a=a torch.Tensor of dtype torch.float32"):
        dtypes.from_numpy(torch.ones(2))
    with pytest.raises(ValueError, match=r"Received: identifier=torch.int16"):
        dtypes.to_numpy(torch.ones(2, dtype=torch.int16))
    with pytest.raises(ValueError, match=r"Received: identifier=dtype\('int16'\)"):
        dtypes.from_numpy(np.ones(2, np.int16))


@given(st_mpq.format_names(max_bits=16).flatmap(lambda n: st_mpq.arrays(n, st_mpq.shapes(0, 3))))
def test_round_trip_on_drawn_arrays_of_any_shape(a):
    fmt = dtypes.get(a.dtype)
    t = dtypes.from_numpy(a)
    assert tuple(t.shape) == a.shape
    np.testing.assert_array_equal(bits_of(dtypes.to_numpy(t, fmt), fmt), bits_of(a, fmt))


# ---------------------------------------------------------------------------------------------
# decode
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SMALL)
def test_decode_every_code(name):
    fmt = dtypes.get(name)
    codes = all_codes(fmt)
    expected = values_of(codes)
    from_numpy = dtypes.decode(codes)
    from_torch = dtypes.decode(dtypes.from_numpy(codes), fmt)
    assert from_numpy.dtype == np.float32 and from_torch.dtype == torch.float32
    np.testing.assert_array_equal(values_of(from_numpy), expected)
    np.testing.assert_array_equal(values_of(from_torch.numpy()), expected)
    signed = ~np.isnan(expected)  # NaN signs are not values (torch and ml_dtypes differ on fnuz)
    np.testing.assert_array_equal(
        np.signbit(from_torch.numpy()[signed]), np.signbit(expected[signed])
    )


def test_decode_dtype_and_errors():
    big = np.array([2**31 - 1], np.int32)
    assert dtypes.decode(big).dtype == np.float64  # int32 is not exact in float32
    assert dtypes.decode(big)[0] == 2**31 - 1
    q = torch.tensor([3], dtype=torch.uint8)
    assert dtypes.decode(q, "float4_e2m1fn", dtype=torch.float64).dtype == torch.float64
    assert dtypes.decode(q, "float4_e2m1fn").item() == 1.5
    assert dtypes.decode(q).item() == 3.0  # a plain uint8 without fmt
    with pytest.raises(ValueError, match=r"Received: dtype=torch.int8"):
        dtypes.decode(q, "float4_e2m1fn", dtype=torch.int8)
    with pytest.raises(TypeError, match=r"Received: q=\(1, 2\) \(of type tuple\)"):
        dtypes.decode((1, 2))
    with pytest.raises(TypeError, match=r"Received: q=a torch.Tensor of dtype torch.uint8"):
        dtypes.decode(q, "int4")
    with pytest.raises(ValueError, match=r"q\[\(0,\)\] = 17"):
        dtypes.decode(torch.tensor([17], dtype=torch.uint8), "float4_e2m1fn")
