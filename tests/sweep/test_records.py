"""Records (JSONL, summary, table, CSV), per-layer sensitivity and suggestion search, data,
plots, weight bytes."""

from __future__ import annotations

import csv
import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from mpq.sweep import sensitivity
from mpq.sweep.data import Data, as_data, digits, digits_flat, synthetic
from mpq.sweep.experiment import weight_bytes
from mpq.sweep.records import JsonlWriter, format_table, read_jsonl, summarize, write_csv


def _rec(model, variant, seed=0, **kw):
    base = {"config_hash": f"{model}-{variant}-{seed}", "kind": "policy", "model": model,
            "variant": variant, "policy": variant, "seed": seed, "status": "ok"}  # fmt: skip
    base.update(kw)
    return base


def test_jsonl_round_trip_streams_and_nulls_infinities(tmp_path):
    path = tmp_path / "sub" / "r.jsonl"
    with JsonlWriter(path) as w:
        w.write({"a": 1, "s": math.inf})
        assert len(path.read_text().splitlines()) == 1  # flushed as written
        w.write({"a": 2, "s": math.nan})
    with JsonlWriter(path) as w:  # appends
        w.write({"a": 3, "s": 1.5})
    assert read_jsonl(path) == [{"a": 1, "s": None}, {"a": 2, "s": None}, {"a": 3, "s": 1.5}]


def test_read_jsonl_skips_a_torn_last_line_only(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"a": 1}\n{"a": 2')
    assert read_jsonl(path) == [{"a": 1}]
    path.write_text('{"a": 1\n{"a": 2}\n')
    with pytest.raises(ValueError, match="line 1 is not valid JSON"):
        read_jsonl(path)
    assert read_jsonl(tmp_path / "absent.jsonl") == []


def test_writer_outside_with_raises(tmp_path):
    with pytest.raises(RuntimeError, match="closed writer"):
        JsonlWriter(tmp_path / "x").write({})


def test_summarize_means_over_seeds_and_sorts():
    recs = [
        _rec("b", "float32", 0, accuracy=0.9, weight_bytes=100, sqnr_db=None),
        _rec("b", "float32", 1, accuracy=0.8, weight_bytes=100, sqnr_db=None),
        _rec("b", "int8", 0, accuracy=0.5, weight_bytes=30, sqnr_db=30.0),
        _rec("b", "int8", 1, accuracy=0.7, weight_bytes=30, sqnr_db=40.0),
        _rec("a", "int4", 0, status="error", error="boom"),
        _rec("a", "float16", 0, accuracy=1.0, weight_bytes=50, sqnr_db=60.0),
        _rec("a", "bfloat16", 0, accuracy=1.0, weight_bytes=50, sqnr_db=45.0),
        {**_rec("a", "int8", 0), "kind": "per_layer"},
    ]
    rows = summarize(recs)
    assert [(r["model"], r["variant"]) for r in rows] == [
        ("a", "float16"), ("a", "bfloat16"), ("a", "int4"), ("b", "float32"), ("b", "int8"),
    ]  # fmt: skip
    b32, b8 = rows[3], rows[4]
    assert b32["accuracy"] == pytest.approx(0.85)
    assert b32["sqnr_db"] == math.inf
    assert b8["sqnr_db"] == 35.0
    assert b8["n"] == 2
    assert rows[2]["status"] == "1 failed: boom"
    assert rows[2]["error"] == "boom"
    assert rows[2]["n"] == 0


def test_format_table_is_aligned():
    rows = summarize([
        _rec("digits_cnn", "float32", accuracy=0.981, weight_bytes=40000, sqnr_db=None),
        _rec("digits_cnn", "int4-g32", accuracy=0.5, weight_bytes=6000, sqnr_db=19.25),
        _rec("m", "int8", status="error", error="x"),
    ])  # fmt: skip
    text = format_table(rows)
    lines = text.splitlines()
    head, rule = lines[0], lines[1]
    # every column starts where its rule segment starts
    starts = [i for i, ch in enumerate(rule) if ch == "-" and (i == 0 or rule[i - 1] == " ")]
    for line in (head, lines[2], lines[3]):
        for s in starts[1:]:
            assert line[s - 2 : s] == "  " or line[s - 1] == " "
    assert "98.1" in lines[2] and "inf" in lines[2] and "39.1 KiB" in lines[2]
    assert "19.2" in lines[3]
    assert lines[4] == ""  # a blank line between models
    assert lines[5].startswith("m ")


def test_write_csv(tmp_path):
    rows = [
        {"model": "m", "sqnr_db": math.inf, "acc": None},
        {"model": "n", "sqnr_db": 3.5, "acc": 1},
    ]
    write_csv(rows, tmp_path / "s.csv")
    with (tmp_path / "s.csv").open() as f:
        got = list(csv.DictReader(f))
    assert got == [
        {"model": "m", "sqnr_db": "inf", "acc": ""},
        {"model": "n", "sqnr_db": "3.5", "acc": "1"},
    ]


# -- sensitivity ------------------------------------------------------------------------------
def test_predicted_sqnr_adds_noise_powers():
    assert sensitivity.predicted_sqnr([30.0]) == 30.0
    assert sensitivity.predicted_sqnr([30.0, 30.0]) == pytest.approx(
        30.0 - 10 * math.log10(2), abs=1e-12
    )
    assert sensitivity.predicted_sqnr([20.0, math.inf]) == 20.0
    assert sensitivity.predicted_sqnr([math.inf]) == math.inf


def _layer_rows():
    # two layers of 1000 float32 bytes each; int8 = 260 bytes, int4 = 140 bytes, float16 = 500
    table = {
        ("l0", "float16"): (70.0, 500), ("l0", "int8"): (40.0, 260), ("l0", "int4"): (25.0, 140),
        ("l1", "float16"): (70.0, 500), ("l1", "int8"): (28.0, 260), ("l1", "int4"): (14.0, 140),
    }  # fmt: skip
    return [
        {"kind": "per_layer", "model": "m", "seed": 0, "status": "ok", "layer": layer,
         "variant": v, "sqnr_db": s, "layer_weight_bytes": b, "float32_layer_weight_bytes": 1000,
         "float32_weight_bytes": 2100, "quantize_config": None}
        for (layer, v), (s, b) in table.items()
    ]  # fmt: skip


def test_suggest_finds_the_cheapest_assignment_meeting_the_target():
    rows = _layer_rows()
    best = sensitivity.suggest(rows, target_sqnr=30.0)
    # int8 on l1 alone is 28 dB < 30: l1 needs float16; l0 can go to int4 (25 dB)? 25 dB with
    # l1 float16 (70 dB) predicts ~25 dB < 30, so l0 takes int8 (40 dB).
    assert best[0].assignment == (("l0", "int8"), ("l1", "float16"))
    assert best[0].weight_bytes == 100 + 260 + 500
    assert best[0].predicted_sqnr_db >= 30.0
    assert [s.weight_bytes for s in best] == sorted({s.weight_bytes for s in best})  # distinct
    assert len(best) == 3
    # brute force over all 16 assignments agrees
    opts = {"float32": (math.inf, 1000)}
    brute = []
    for a in ["float32", "float16", "int8", "int4"]:
        for b in ["float32", "float16", "int8", "int4"]:
            sa = opts.get(a) or next(
                (r["sqnr_db"], r["layer_weight_bytes"])
                for r in rows
                if r["layer"] == "l0" and r["variant"] == a
            )
            sb = opts.get(b) or next(
                (r["sqnr_db"], r["layer_weight_bytes"])
                for r in rows
                if r["layer"] == "l1" and r["variant"] == b
            )
            if sensitivity.predicted_sqnr([sa[0], sb[0]]) >= 30.0:
                brute.append(100 + sa[1] + sb[1])
    assert best[0].weight_bytes == min(brute)


def test_suggest_greedy_meets_the_target(monkeypatch):
    monkeypatch.setattr(sensitivity, "EXHAUSTIVE_LIMIT", 0)
    (s,) = sensitivity.suggest(_layer_rows(), target_sqnr=30.0)
    assert s.predicted_sqnr_db >= 30.0
    assert s.weight_bytes <= 2100


def test_suggest_unreachable_and_policy_map():
    assert sensitivity.suggest(_layer_rows(), target_sqnr=500.0)[0].assignment == (
        ("l0", "float32"), ("l1", "float32"),
    )  # fmt: skip
    assert sensitivity.suggest([], 30.0) == []
    s = sensitivity.suggest(_layer_rows(), 30.0)[0]
    m = s.policy_map({"int8": "int8_from_float32", "float16": "float16"})
    assert m["l0"].name == "int8_from_float32"
    assert m["l1"].name == "float16"
    assert m["other"].name == "float32"


def test_per_layer_matrix():
    layers, variants, matrix = sensitivity.per_layer_matrix(_layer_rows()[:4])
    assert layers == ["l0", "l1"]
    assert variants == ["float16", "int8", "int4"]
    assert matrix == [[70.0, 40.0, 25.0], [70.0, None, None]]


# -- data and bytes ---------------------------------------------------------------------------
def test_digits_split_is_fixed_and_disjoint():
    d = digits()
    assert d.x_train.shape == (1438, 8, 8, 1)
    assert d.x_test.shape == (359, 8, 8, 1)
    assert d.x_train.dtype == np.float32
    assert d.x_train.min() >= 0.0 and d.x_train.max() <= 1.0
    f = digits_flat()
    np.testing.assert_array_equal(f.x_test, d.x_test.reshape(-1, 64))
    np.testing.assert_array_equal(f.y_test, digits().y_test)
    train = {row.tobytes() for row in f.x_train}
    assert (
        sum(row.tobytes() in train for row in f.x_test) < 5
    )  # the digits set has a few duplicates


def test_data_batches_and_errors():
    d = synthetic(n_features=8, n_classes=3, n_train=10, n_test=5)
    sizes = [len(y) for _, y in d.train_batches(4, seed=0, epoch=0)]
    assert sizes == [4, 4, 2]
    order0 = np.concatenate([y for _, y in d.train_batches(4, 0, 0)])
    order1 = np.concatenate([y for _, y in d.train_batches(4, 0, 1)])
    assert sorted(order0) == sorted(order1) == sorted(d.y_train)
    with pytest.raises(ValueError, match=r"len\(x_train\)=3, len\(y_train\)=2"):
        Data(np.zeros((3, 2)), np.zeros(2), np.zeros((1, 2)), np.zeros(1))
    with pytest.raises(ValueError, match="loaders given"):
        Data(train_loader=[1])
    with pytest.raises(TypeError, match="of type int"):
        as_data(5)
    loaders = as_data(([(torch.zeros(2, 3), torch.zeros(2))], [(torch.ones(1, 3), torch.ones(1))]))
    assert loaders.uses_loaders
    assert [x.shape[0] for x, _ in loaders.test_batches(100)] == [1]


def test_weight_bytes_counts_what_is_stored():
    lin = torch.nn.Linear(4, 2)
    assert weight_bytes(lin) == (8 + 2) * 4
    assert weight_bytes(lin.to(torch.bfloat16)) == (8 + 2) * 2
    m = torch.nn.Module()
    m.register_buffer("q", torch.zeros(3, 5, dtype=torch.int8))
    m.register_buffer("scale", torch.zeros(3, dtype=torch.float32))
    assert weight_bytes(m) == 15 + 12


# -- plots ------------------------------------------------------------------------------------
def test_plots_write_pngs(tmp_path):
    pytest.importorskip("matplotlib")
    from mpq.sweep.plots import plot_per_layer, plot_sweep

    rows = summarize([
        _rec("cnn", "float32", accuracy=0.98, weight_bytes=40000, sqnr_db=None),
        _rec("cnn", "int8", accuracy=0.97, weight_bytes=11000, sqnr_db=38.0),
        _rec("mlp", "float32", accuracy=0.97, weight_bytes=60000, sqnr_db=None),
        _rec("mlp", "int4", accuracy=0.90, weight_bytes=9000, sqnr_db=18.0),
    ])  # fmt: skip
    plot_sweep(rows, tmp_path / "sweep.png")
    layers, variants, matrix = sensitivity.per_layer_matrix(_layer_rows())
    plot_per_layer([("m", layers, variants, matrix)], tmp_path / "per_layer.png")
    for name in ("sweep.png", "per_layer.png"):
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        assert len(data) > 10_000


# -- the Record, declared once ---------------------------------------------------------------
DATA = Path(__file__).parent / "data"

#: The columns of summary.csv as the previous version wrote them (the file format's oracle).
OLD_CSV_COLUMNS = [
    "model", "variant", "policy", "n", "accuracy", "accuracy_delta", "loss", "sqnr_db",
    "weight_bytes", "bytes_ratio", "latency_ms", "finetune_accuracy", "float32_accuracy", "task",
    "metric", "metric_value", "metric_delta", "metric_delta_pct", "float32_metric", "perplexity",
    "bits_per_byte", "mse", "status", "error",
]  # fmt: skip


def _old_lines():
    import json

    return [json.loads(line) for line in (DATA / "results_v0.jsonl").read_text().splitlines()]


def test_records_of_the_previous_version_read_back_key_for_key():
    from mpq.sweep.records import Record

    for line in _old_lines():
        rec = Record.from_dict(line)
        assert rec.extra == {}  # every key of the old format is a field
        assert list(rec) == list(line)  # same keys, same order (traceback only on errors)
        assert dict(rec) == line


def test_record_fields_are_the_jsonl_keys_and_the_csv_derives_from_one_row(tmp_path):
    from mpq.sweep.records import CSV_COLUMNS, RECORD_KEYS, Record, SummaryRow

    assert RECORD_KEYS == ("config_hash", "model", "variant", "seed", "status")
    ok = next(line for line in _old_lines() if line["status"] == "ok")
    rec = Record.from_dict(ok)
    assert rec.sqnr_db is None and rec.weight_bytes == 268 and rec.variant == "float32"
    assert list(CSV_COLUMNS) == OLD_CSV_COLUMNS
    (row,) = summarize([rec])
    assert isinstance(row, SummaryRow) and row["n"] == 1 and row.sqnr_db == math.inf
    write_csv([row], tmp_path / "s.csv", CSV_COLUMNS)
    with (tmp_path / "s.csv").open() as f:
        assert next(csv.reader(f)) == OLD_CSV_COLUMNS


def test_unknown_keys_are_kept_and_missing_ones_refused(tmp_path):
    from mpq.sweep.records import Record

    rec = Record.from_dict({**_rec("m", "int8"), "from_the_future": [1, 2]})
    assert rec.extra == {"from_the_future": [1, 2]} and rec["from_the_future"] == [1, 2]
    with JsonlWriter(tmp_path / "r.jsonl") as w:
        w.write(rec)
    assert read_jsonl(tmp_path / "r.jsonl")[0]["from_the_future"] == [1, 2]
    with pytest.raises(ValueError, match=r"Expected a record with the keys \['config_hash', "
                                         r"'model', 'variant', 'seed', 'status'\]. Received: a "
                                         r"record without \['seed'\]"):  # fmt: skip
        Record.from_dict({"config_hash": "x", "model": "m", "variant": "v", "status": "ok"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        rec.status = "error"


def test_a_results_file_of_the_previous_version_resumes(tmp_path, monkeypatch):
    """tests/sweep/data/results_v0.jsonl was written by the previous version of the sweep (the
    same tiny sweep as below, its host name and traceback shortened): its ok runs are reused
    as they are, its failed run (int8 on a plain torch module) runs again."""
    import shutil

    import mpq
    import mpq.sweep as sweep
    from tests.sweep._helpers import tiny_config

    old = _old_lines()
    monkeypatch.setattr(mpq, "__version__", old[0]["mpq_version"])  # hashes include it
    out = tmp_path / "out"
    out.mkdir()
    shutil.copyfile(DATA / "results_v0.jsonl", out / "results.jsonl")
    cfg = tiny_config(tmp_path, policies=["float32", "bfloat16", "mixed_bfloat16", "int8"])
    new = []
    records = sweep.run(cfg, verbose=False, on_record=new.append)
    assert [r.variant for r in new] == ["int8"]
    assert [dict(r) for r in records[:3]] == old[:3]
    assert records[3].status == "error" and records[3].config_hash == old[3]["config_hash"]
    with (out / "summary.csv").open() as f:
        assert next(csv.reader(f)) == OLD_CSV_COLUMNS


def test_sweep_plot_of_a_task_without_accuracy(tmp_path):
    """A regression task has no accuracy: its points go on the SQNR panel only."""
    pytest.importorskip("matplotlib")
    from mpq.sweep.plots import plot_sweep

    rows = summarize([
        _rec("reg", "float32", metric="mse", metric_value=0.1, weight_bytes=4000, sqnr_db=None),
        _rec("reg", "int8", metric="mse", metric_value=0.2, weight_bytes=1000, sqnr_db=30.0),
    ])  # fmt: skip
    assert all(r.accuracy is None for r in rows)
    plot_sweep(rows, tmp_path / "sweep.png")
    assert (tmp_path / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
