"""Sweep data safety: results.jsonl after a crash (a torn last line, bad lines in the middle),
complete-line and all-at-once writes, Ctrl-C for real, and option limits checked before work."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import mpq.sweep as sweep
from mpq.sweep import records as records_mod
from mpq.sweep.cli import _parse_seeds, build_parser, config_from_args, main
from mpq.sweep.config import MAX_SEEDS, SEED_LIMIT, SweepConfig
from mpq.sweep.records import JsonlWriter, ResultsFileError, scan_results, write_atomic
from tests.sweep._helpers import TINY, tiny_config

ROOT = Path(__file__).resolve().parents[2]

CLI_TINY = ["--models", TINY, "--policies", "float32,float16,bfloat16", "--executor", "serial"]
CLI_TINY += ["--quick", "--no-plot"]


def _parsed(path: Path) -> list[dict]:
    """Every line of the file as JSON (fails on any line that is not)."""
    data = path.read_bytes()
    assert data.endswith(b"\n")
    return [json.loads(line) for line in data.splitlines()]


# --------------------------------------------------------------------------------------------
# A torn last line
# --------------------------------------------------------------------------------------------
def test_resume_sets_a_torn_tail_aside_and_reruns_only_that_run(tmp_path, capsys):
    cfg = tiny_config(tmp_path)
    first = sweep.run(cfg, verbose=False)
    path = tmp_path / "out" / "results.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    cut = lines[-1][: len(lines[-1]) // 2]  # the last record, cut mid-write by a crash
    kept = b"".join(lines[:-1])
    path.write_bytes(kept + cut)
    capsys.readouterr()

    new: list[dict] = []
    second = sweep.run(cfg, verbose=False, on_record=new.append)
    assert [r["config_hash"] for r in new] == [first[-1]["config_hash"]]  # only the lost run
    assert [r["config_hash"] for r in second] == [r["config_hash"] for r in first]
    torn = list((tmp_path / "out").glob("results.jsonl.torn-*"))
    assert len(torn) == 1
    assert torn[0].read_bytes() == cut  # set aside as it was
    err = capsys.readouterr().err
    assert f"moved it to {torn[0]} and kept the {len(lines) - 1} complete records" in err
    data = path.read_bytes()
    assert data.startswith(kept)  # the complete records, byte for byte
    assert [r["config_hash"] for r in _parsed(path)] == [r["config_hash"] for r in first]

    new.clear()
    sweep.run(cfg, verbose=False, on_record=new.append)  # the next resume has nothing to do
    assert new == []
    assert len(list((tmp_path / "out").glob("results.jsonl.torn-*"))) == 1


def test_a_last_record_without_its_newline_is_kept(tmp_path, capsys):
    cfg = tiny_config(tmp_path, policies=["float32", "float16"])
    sweep.run(cfg, verbose=False)
    path = tmp_path / "out" / "results.jsonl"
    whole = path.read_bytes()
    path.write_bytes(whole[:-1])
    new: list[dict] = []
    sweep.run(cfg, verbose=False, on_record=new.append)
    assert new == []
    assert path.read_bytes() == whole
    assert not list((tmp_path / "out").glob("results.jsonl.torn-*"))
    assert "cut short" not in capsys.readouterr().err


def test_scan_results_reports_without_changing_the_file(tmp_path):
    path = tmp_path / "r.jsonl"
    rec = {"config_hash": "h", "model": "m", "variant": "v", "seed": 0, "status": "ok"}
    body = (json.dumps(rec) + "\n").encode()
    path.write_bytes(body + b'{"config_hash": "h2", "mo')
    scan = scan_results(path)
    assert (scan.records, scan.torn_tail, scan.complete_bytes) == (
        [rec],
        b'{"config_hash": "h2", "mo',
        len(body),
    )
    assert path.read_bytes() == body + b'{"config_hash": "h2", "mo'
    assert scan_results(tmp_path / "absent.jsonl").records == []


# --------------------------------------------------------------------------------------------
# A bad line in the middle
# --------------------------------------------------------------------------------------------
def _torn_json(line: bytes) -> bytes:
    return line[: len(line) // 2]


def _missing_key(line: bytes) -> bytes:
    rec = json.loads(line)
    del rec["config_hash"]
    return json.dumps(rec).encode()


def _not_an_object(line: bytes) -> bytes:
    return b"[1, 2, 3]"


@pytest.mark.parametrize(
    ("corrupt", "reason"),
    [
        (_torn_json, "line 2 is not valid JSON"),
        (_missing_key, "line 2 lacks the key(s) ['config_hash']"),
        (_not_an_object, "line 2 is not a JSON object (a list)"),
    ],
)
def test_a_bad_middle_line_stops_before_work_and_offers_the_ways_out(
    tmp_path, capsys, corrupt, reason
):
    out = tmp_path / "out"
    path = out / "results.jsonl"
    assert main([*CLI_TINY, "--out", str(out)]) == 0
    lines = path.read_bytes().splitlines()
    assert len(lines) == 3
    bad_variant = json.loads(lines[1])["variant"]
    lines[1] = corrupt(lines[1])
    corrupted = b"\n".join(lines) + b"\n"
    path.write_bytes(corrupted)
    capsys.readouterr()

    with pytest.raises(SystemExit) as exc:
        main([*CLI_TINY, "--out", str(out)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1  # one line, no traceback
    assert err.startswith("mpq sweep: error: Expected one JSON record per line with keys ")
    assert f"in {str(path)!r}. Received: {reason}" in err
    assert "--skip-bad-lines" in err and "--overwrite" in err
    assert path.read_bytes() == corrupted  # untouched
    with pytest.raises(ResultsFileError, match=re.escape(reason)):
        sweep.run(SweepConfig(models=[TINY], policies=["float32"], out=str(out)), verbose=False)

    # Way out 1: skip the bad line with a warning; its run is computed again.
    assert main([*CLI_TINY, "--out", str(out), "--skip-bad-lines"]) == 0
    err = capsys.readouterr().err
    assert f"warning: skipped 1 bad line(s) of {path} (line 2: " in err
    data = path.read_bytes()
    assert data.startswith(corrupted)  # the bad line stays where it was
    appended = [json.loads(x) for x in data[len(corrupted) :].splitlines()]
    assert [r["variant"] for r in appended] == [bad_variant]

    # Way out 2: a new file; the old one is kept aside.
    assert main([*CLI_TINY, "--out", str(out), "--overwrite"]) == 0
    err = capsys.readouterr().err
    (old,) = out.glob("results.jsonl.old-*")
    assert old.read_bytes() == data
    assert f"--overwrite: moved the previous results to {old}" in err
    assert [r["variant"] for r in _parsed(path)] == ["float32", "float16", "bfloat16"]


# --------------------------------------------------------------------------------------------
# Writes: whole lines, whole files
# --------------------------------------------------------------------------------------------
def test_writer_writes_whole_lines_through_short_writes_and_fsyncs_each(tmp_path, monkeypatch):
    path = tmp_path / "r.jsonl"
    real_write, writes, syncs = os.write, [], []

    def short_write(fd, data):  # what a full disk may do: fewer bytes than asked
        n = max(1, len(data) // 3)
        writes.append(n)
        return real_write(fd, bytes(data[:n]))

    with JsonlWriter(path) as w:
        monkeypatch.setattr(records_mod.os, "write", short_write)
        monkeypatch.setattr(records_mod.os, "fsync", lambda fd: syncs.append(fd))
        w.write({"a": "x" * 200, "b": math.inf})
        w.write({"a": 2})
        monkeypatch.undo()
    assert len(writes) > 2 and len(syncs) == 2
    assert path.read_text() == '{"a": "' + "x" * 200 + '", "b": null}\n{"a": 2}\n'


def test_write_atomic_replaces_all_at_once_or_not_at_all(tmp_path, monkeypatch):
    path = tmp_path / "summary.csv"
    write_atomic(path, "old\n")
    write_atomic(path, b"new\n")
    assert path.read_bytes() == b"new\n"

    def no_rename(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(records_mod.os, "replace", no_rename)
    with pytest.raises(OSError, match="No space left"):
        write_atomic(path, "newer\n")
    assert path.read_bytes() == b"new\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.csv"]  # no temp file left


# --------------------------------------------------------------------------------------------
# Ctrl-C, for real
# --------------------------------------------------------------------------------------------
def _alive_in_group(pgid: int) -> list[str]:
    """Processes of a process group that are not zombies (Linux /proc)."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text.rsplit(")", 1)[-1].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            alive.append(text[:80])
    return alive


def _as_in_a_terminal() -> None:
    """In the child before exec: Ctrl-C as a terminal delivers it (a test runner's worker may
    ignore or block SIGINT, and a child would inherit that)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_ctrl_c_stops_with_one_line_and_a_resume_finishes(tmp_path):
    out = tmp_path / "out"
    path = out / "results.jsonl"
    options = ["--models", "tests.sweep._helpers:held_factory", "--seeds", "0-3", "--quick"]
    options += ["--policies", "float32,float16,bfloat16,mixed_bfloat16", "--workers", "2"]
    options += ["--no-plot", "--out", str(out)]
    argv = [sys.executable, "-m", "mpq.sweep", *options]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("SWEEP_TEST_HOLD", None)
    held = {**env, "SWEEP_TEST_HOLD": str(path)}  # builds wait once a record is written
    proc = subprocess.Popen(
        argv, cwd=tmp_path, env=held, text=True, start_new_session=True,
        preexec_fn=_as_in_a_terminal,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while not (path.exists() and path.read_bytes().count(b"\n") >= 1):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no record within 300 s"
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole group
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "Error" not in err, err
    said = [
        line
        for line in err.splitlines()
        if not line.startswith("[") and not re.match(r"mpq sweep: \d+ model\(s\)", line)
    ]
    assert len(said) == 1, err  # one line besides the header and the progress lines
    m = re.fullmatch(
        rf"mpq sweep: interrupted; kept (\d+) complete records in {re.escape(str(path))}; "
        r"run the same command again to resume \(recorded runs are not computed again\)",
        said[0],
    )
    assert m, said[0]
    kept = _parsed(path)  # only complete lines
    assert int(m.group(1)) == len(kept) >= 1
    assert len(kept) < 16  # it stopped: 16 runs in all
    deadline = time.monotonic() + 30
    while _alive_in_group(proc.pid) and time.monotonic() < deadline:  # workers terminated
        time.sleep(0.1)
    assert _alive_in_group(proc.pid) == []

    done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    final = _parsed(path)
    assert final[: len(kept)] == kept
    expected = {rc.config_hash for rc in config_from_args(build_parser().parse_args(options)).run_configs()}  # fmt: skip
    assert len(final) == len(expected) == 16  # each run recorded once
    assert {r["config_hash"] for r in final} == expected
    assert all(r["status"] == "ok" for r in final)


# --------------------------------------------------------------------------------------------
# Options: a usage error before any work, never a traceback
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--target-sqnr", "nan"], "Received: target_sqnr=nan"),
        (["--target-sqnr", "inf"], "Received: target_sqnr=inf"),
        (["--target-sqnr", "-3"], "Received: target_sqnr=-3.0"),
        (["--target-sqnr", "0"], "finite and > 0"),
        (["--seeds", "99999999999999999999"], "Expected seeds in [0, 2**32)"),
        (["--seeds", "4294967296"], "(seed 4294967296)"),
        (["--seeds", "0-10000000000"], "Expected seeds in [0, 2**32)"),
        (["--seeds", "0-1000"], "Expected at most 1000 seeds"),
        (["--seeds", "0-600,1000-1500"], "Expected at most 1000 seeds"),
        (["--seeds", "5-3"], "low <= high. Received: --seeds '5-3'"),
        (["--seeds", "-1"], "Received: --seeds '-1'"),
        (["--seeds", ","], "Received: --seeds ','"),
        (["--seeds", "1e3"], "Received: --seeds '1e3'"),
        (["--seeds", "0,0"], "Expected each seed once"),
        (["--workers", "100000"], "int in [1, 256]"),
        (["--workers", "-1"], "workers=-1"),
        (["--finetune-epochs", "-1"], "finetune_epochs=-1"),
        (["--finetune-epochs", "99999999999999999999"], "int in [0, 10000]"),
        (["--cpus-per-run", "nan"], "'num_cpus': nan"),
        (["--gpus-per-run", "inf"], "'num_gpus': inf"),
        (["--cpus-per-run", "-1"], "'num_cpus': -1.0"),
        (["--device", "cuda:x"], "device='cuda:x'"),
        (["--ray-address", " "], "ray_address=' '"),
    ],
)
def test_bad_option_values_are_usage_errors(tmp_path, capsys, argv, message):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--out", str(out)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("mpq sweep: error: Expected") and err.count("\n") == 1
    assert message in err
    assert not (out / "results.jsonl").exists()


@pytest.mark.parametrize(
    "argv", [["--workers", "two"], ["--target-sqnr", "x"], ["--executor", "x"]]
)
def test_malformed_values_are_argparse_usage_errors(capsys, argv):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: mpq sweep") and "error: argument" in err


def test_empty_out_is_refused():
    with pytest.raises(
        ValueError, match=re.escape("Expected `out` to be a directory path. Received: out=''")
    ):
        SweepConfig(out="")


@given(st.text(max_size=40))
def test_any_seeds_text_is_parsed_within_limits_or_refused(text):
    try:
        seeds = _parse_seeds(text)
    except ValueError as e:
        assert str(e).startswith("Expected")
        return
    assert 0 < len(seeds) <= MAX_SEEDS
    assert all(0 <= s < SEED_LIMIT for s in seeds)


@given(st.lists(st.tuples(st.integers(0, 2**70), st.integers(0, 2**70)), min_size=1, max_size=4))
def test_seed_ranges_are_checked_before_they_are_expanded(ranges):
    text = ",".join(f"{lo}-{hi}" for lo, hi in ranges)
    try:
        seeds = _parse_seeds(text)
    except ValueError as e:
        assert str(e).startswith("Expected")
        return
    assert seeds == tuple(s for lo, hi in ranges for s in range(lo, hi + 1))
    assert len(seeds) <= MAX_SEEDS and max(seeds) < SEED_LIMIT


_NUMERIC_OPTIONS = [
    "--workers", "--finetune-epochs", "--target-sqnr", "--cpus-per-run", "--gpus-per-run",
    "--seeds", "--device",
]  # fmt: skip


@given(
    option=st.sampled_from(_NUMERIC_OPTIONS),
    value=st.one_of(
        st.text(max_size=12),
        st.floats().map(repr),
        st.integers(-(2**70), 2**70).map(str),
    ),
)
def test_any_option_value_gives_a_valid_config_or_a_usage_error(option, value):
    try:
        cfg = config_from_args(build_parser().parse_args([option, value]))
    except SystemExit as e:  # argparse: a value of the wrong type
        assert e.code == 2
        return
    except (ValueError, TypeError) as e:  # mpq sweep: error: ... (exit status 2)
        assert str(e).startswith("Expected")
        return
    assert cfg.workers is None or 1 <= cfg.workers <= 256
    assert 0 <= cfg.finetune_epochs <= 10_000
    assert math.isfinite(cfg.target_sqnr) and cfg.target_sqnr > 0
    assert all(math.isfinite(v) and v >= 0 for v in cfg.resources.values())
    assert all(0 <= s < SEED_LIMIT for s in cfg.seeds) and len(cfg.seeds) <= MAX_SEEDS


@pytest.mark.parametrize(
    ("kw", "error", "message"),
    [
        ({"target_sqnr": math.nan}, ValueError, "target_sqnr=nan"),
        ({"target_sqnr": -1.0}, ValueError, "finite and > 0"),
        ({"seeds": (2**32,)}, ValueError, "seed=4294967296"),
        ({"seeds": tuple(range(1001))}, ValueError, "Received: 1001 seeds"),
        ({"seeds": "0"}, ValueError, "seeds='0'"),
        ({"workers": 257}, ValueError, "workers=257"),
        ({"finetune_epochs": True}, ValueError, "finetune_epochs=True"),
        ({"resources": {"num_cpus": math.nan}}, ValueError, "'num_cpus': nan"),
        (
            {"quick": "yes"},
            TypeError,
            "Expected `quick` to be true or false. Received: quick='yes'",
        ),
        ({"overwrite": 1}, TypeError, "overwrite=1 (of type int)"),
        ({"device": "cuda:0:1"}, ValueError, "device='cuda:0:1'"),
    ],
)
def test_sweep_config_limits(kw, error, message):
    with pytest.raises(error, match=re.escape(message)):
        SweepConfig(**kw)


def test_sweep_file_values_are_checked_too(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text("[sweep]\ntarget_sqnr = nan\n")
    with pytest.raises(ValueError, match="target_sqnr=nan"):
        sweep.load_config(path)
    path.write_text("[sweep]\nseeds = [0, 4294967296]\n")
    with pytest.raises(ValueError, match="seed=4294967296"):
        sweep.load_config(path)
