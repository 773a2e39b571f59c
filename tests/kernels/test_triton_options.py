"""Kernel choice (the dispatch rule by capability and shape) and the Triton options block."""

from __future__ import annotations

import threading

import pytest

from mpq.kernels import _triton_options as O

pytestmark = pytest.mark.kernels

H100, A100, L40 = (9, 0), (8, 0), (8, 9)


@pytest.mark.parametrize(
    ("kind", "M", "capability", "tma_ok", "expected"),
    [
        ("bfloat16", 4096, H100, True, "persistent"),
        ("float8", 4096, H100, True, "persistent"),
        ("int8", 4096, H100, True, "persistent"),
        ("bfloat16", 4096, H100, False, "tiled"),  # layout TMA cannot read
        ("float32", 4096, H100, True, "tiled"),  # IEEE fp32: FMA tiles
        ("bfloat16", 4096, A100, True, "tiled"),  # no TMA before sm_90
        ("float8", 4096, L40, True, "tiled"),
        ("bfloat16", 4096, None, True, "tiled"),  # interpreter / unknown device
        ("bfloat16", 1, H100, True, "small_m"),
        ("float16", 16, H100, False, "small_m"),
        ("int4", 8, H100, False, "small_m"),
        ("int4", 17, H100, False, "tiled"),
        ("bfloat16", 17, H100, True, "tiled"),  # 17 <= M <= 64: the tiled kernel splits K
        ("bfloat16", 64, H100, True, "tiled"),
        ("bfloat16", 65, H100, True, "persistent"),
        ("int8", 1, H100, True, "tiled"),  # 8-bit x 8-bit has no small-M kernel
        ("bfloat16", 1, A100, True, "tiled"),  # new kernels are selected on sm_90+ only
        ("int8_weight", 3, A100, False, "small_m"),  # its only kernel
    ],
)
def test_automatic_choice(kind, M, capability, tma_ok, expected):
    got = O.choose_matmul_kernel(kind, M, capability, tma_ok=tma_ok, interpret=False)
    assert got == expected


def test_forced_choice_and_its_refusals():
    choose = O.choose_matmul_kernel
    assert choose("bfloat16", 4096, H100, tma_ok=True, interpret=False, forced="tiled") == "tiled"
    assert choose("int8", 8, None, tma_ok=True, interpret=True, forced="persistent") == "persistent"
    assert choose("int4", 3, None, tma_ok=False, interpret=True, forced="small_m") == "small_m"
    with pytest.raises(ValueError, match=r"capability >= 9.0 .*Received: capability=\(8, 9\)"):
        choose("float8", 4096, L40, tma_ok=True, interpret=False, forced="persistent")
    with pytest.raises(ValueError, match=r"TMA-compatible.*kind='int4', tma_ok=False"):
        choose("int4", 4096, H100, tma_ok=False, interpret=False, forced="persistent")
    with pytest.raises(ValueError, match=r"M <= 16 .*Received: M=32, kind='bfloat16'"):
        choose("bfloat16", 32, H100, tma_ok=True, interpret=False, forced="small_m")
    with pytest.raises(ValueError, match=r"no tiled kernel\). Received: kernel='tiled'"):
        choose("int8_weight", 1, H100, tma_ok=False, interpret=False, forced="tiled")
    with pytest.raises(ValueError, match=r"`forced` to be one of .*Received: forced='fast'"):
        choose("int8", 1, H100, tma_ok=False, interpret=False, forced="fast")


def test_options_block_nests_restores_and_is_thread_local():
    assert O.current() == O.TritonOptions()
    with O.triton_options(kernel="tiled") as outer:
        assert outer.kernel == "tiled" and outer.fp8_promote == 1
        with O.triton_options(fp8_accumulation="fast") as inner:
            assert inner.kernel == "tiled" and inner.fp8_promote == 0
        with O.triton_options(fp8_promote_every=4):
            assert O.current().fp8_promote == 4
        seen = []
        thread = threading.Thread(target=lambda: seen.append(O.current()))
        thread.start()
        thread.join()
        assert seen == [O.TritonOptions()]
    assert O.current() == O.TritonOptions()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            dict(kernel="fastest"),
            r"`kernel` to be one of .*Received: kernel='fastest' \(of type str\)",
        ),
        (
            dict(fp8_accumulation="exact"),
            r"`fp8_accumulation` to be one of .*fp8_accumulation='exact'",
        ),
        (
            dict(fp8_promote_every=0),
            r"positive int .*Received: fp8_promote_every=0 \(of type int\)",
        ),
        (dict(fp8_promote_every=True), r"Received: fp8_promote_every=True \(of type bool\)"),
        (dict(fp8_promote_every=2.0), r"Received: fp8_promote_every=2.0 \(of type float\)"),
    ],
)
def test_options_errors(kwargs, message):
    with pytest.raises(ValueError, match=message), O.triton_options(**kwargs):
        pass
    assert O.current() == O.TritonOptions()
