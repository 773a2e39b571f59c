"""Sweep configuration: variants, model specs, validation before any work, files, hashes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import mpq.sweep as sweep
from mpq.sweep.config import (
    BUILTIN_VARIANTS,
    ModelSpec,
    SweepConfig,
    Variant,
    config_from_dict,
    load_config,
    resolve_model,
    resolve_variant,
    resolve_variants,
)

ROOT = Path(__file__).resolve().parents[2]


def test_builtin_variants_cover_the_default_set():
    assert list(BUILTIN_VARIANTS) == [
        "float32", "float16", "bfloat16", "mixed_float16", "mixed_bfloat16",
        "int8", "int8-wo", "int4", "int4-g32", "float8", "float8-static",
    ]  # fmt: skip
    assert BUILTIN_VARIANTS["int8-wo"].policy == "int8_from_float32"
    assert BUILTIN_VARIANTS["int8-wo"].quantize_config == {"weight_only": True}
    assert BUILTIN_VARIANTS["int4"].dtype_policy.block_size == -1
    assert BUILTIN_VARIANTS["int4-g32"].dtype_policy.block_size == 32
    assert BUILTIN_VARIANTS["float8"].dtype_policy.mode == "float8"
    assert BUILTIN_VARIANTS["float8-static"].quantize_config == {"scaling": "static"}
    finetuned = {k for k, v in BUILTIN_VARIANTS.items() if v.finetune}
    assert finetuned == {"mixed_float16", "mixed_bfloat16", "float8"}


@pytest.mark.parametrize(
    ("spec", "label", "policy"),
    [
        ("int8-wo", "int8-wo", "int8_from_float32"),
        ("int8_from_float32", "int8", "int8_from_float32"),  # a name that a label stands for
        ("int4/-1_from_float32", "int4", "int4/-1_from_float32"),
        ("int8_from_mixed_bfloat16", "int8_from_mixed_bfloat16", "int8_from_mixed_bfloat16"),
        (" float16 ", "float16", "float16"),
        ({"policy": "int8", "label": "w8"}, "w8", "int8_from_float32"),
    ],
)
def test_resolve_variant(spec, label, policy):
    v = resolve_variant(spec)
    assert (v.label, v.policy) == (label, policy)


def test_resolve_variant_table_with_config_gets_its_own_label():
    v = resolve_variant(
        {"policy": "int8_from_mixed_bfloat16", "quantize_config": {"weight_only": True}}
    )
    assert v.label == "int8_from_mixed_bfloat16"
    assert v.quantize_config == {"weight_only": True}
    assert v.source_policy == "mixed_bfloat16"
    assert v.is_quantized


def test_unknown_policy_name_fails_with_the_name():
    with pytest.raises(ValueError, match="int9_from_float32"):
        resolve_variant("int9_from_float32")
    with pytest.raises(ValueError, match="'floaty'"):
        resolve_variant("floaty")


def test_bad_variant_types():
    with pytest.raises(TypeError, match=r"Received: 3 \(of type int\)"):
        resolve_variant(3)
    with pytest.raises(ValueError, match="'polcy'"):
        resolve_variant({"polcy": "int8"})
    with pytest.raises(ValueError, match="`quantize_config` only with a quantized policy"):
        Variant("x", "float16", {"weight_only": True})
    with pytest.raises(TypeError, match="finetune"):
        Variant("x", "float16", None, finetune="yes")


def test_resolve_variants_string_and_duplicates():
    assert [v.label for v in resolve_variants("float32,int8, int4")] == ["float32", "int8", "int4"]
    with pytest.raises(ValueError, match=r"duplicates: \['int8'\]"):
        resolve_variants(["int8", "int8_from_float32"])
    with pytest.raises(ValueError, match="non-empty list"):
        resolve_variants([])


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("p.txt", "float32\n# a comment\nint8  # W8A8\n\nint4-g32\n"),
        ("p.json", json.dumps(["float32", "int8", "int4-g32"])),
        ("p.toml", 'policies = ["float32", "int8", "int4-g32"]\n'),
    ],
)
def test_policy_files(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    assert [v.label for v in resolve_variants(str(path))] == ["float32", "int8", "int4-g32"]


def test_missing_policy_file():
    with pytest.raises(FileNotFoundError, match=r"nope\.txt"):
        resolve_variants("nope.txt")


def test_model_specs():
    m = resolve_model("digits_cnn")
    assert (m.resolved_name, m.data) == ("digits_cnn", "digits")
    m = resolve_model({"factory": "tests.sweep._helpers:tiny_factory", "epochs": 2})
    assert m.resolved_name == "tiny_factory"
    assert m.to_dict()["factory"] == "tests.sweep._helpers:tiny_factory"
    from tests.sweep._helpers import tiny_factory

    assert resolve_model(tiny_factory).to_dict()["factory"] == "tests.sweep._helpers:tiny_factory"


def test_models_as_a_comma_separated_string():
    config = SweepConfig(models="digits_cnn, digits_mlp", policies="float32")
    assert [m.resolved_name for m in config.models] == ["digits_cnn", "digits_mlp"]
    with pytest.raises(ValueError, match=r"non-empty list of models. Received: models=' ,'"):
        SweepConfig(models=" ,", policies="float32")


def test_bad_models_fail_with_what_was_received():
    with pytest.raises(ValueError, match="'resnet9000'"):
        resolve_model("resnet9000")
    with pytest.raises(ValueError, match="no_such_module_xyz"):
        resolve_model("no_such_module_xyz:f")
    with pytest.raises(ValueError, match="has no attribute 'nope'"):
        resolve_model("tests.sweep._helpers:nope")
    with pytest.raises(TypeError, match=r"Received: 3\.5 \(of type float\)"):
        resolve_model(3.5)
    with pytest.raises(ValueError, match="epochs"):
        ModelSpec("digits_mlp", epochs=-1)
    with pytest.raises(ValueError, match="'layers'"):
        resolve_model({"factory": "digits_mlp", "layers": 3})


@pytest.mark.parametrize(
    ("kwargs", "exc", "pattern"),
    [
        ({"seeds": (0, 0)}, ValueError, r"each seed once"),
        ({"seeds": ("a",)}, ValueError, r"seeds=\('a',\)"),
        ({"seeds": ()}, ValueError, r"non-empty"),
        ({"device": "tpu"}, ValueError, r"device='tpu'"),
        ({"executor": "dask"}, ValueError, r"executor='dask'"),
        ({"workers": 0}, ValueError, r"workers=0"),
        ({"finetune_epochs": -1}, ValueError, r"finetune_epochs=-1"),
        ({"target_sqnr": "30"}, TypeError, r"target_sqnr='30'"),
        ({"resources": {"num_gpus": -1}}, ValueError, r"num_gpus"),
        ({"models": ["digits_mlp", "digits_mlp"]}, ValueError, r"duplicates"),
        ({"policies": ["int8", "bogus"]}, ValueError, r"'bogus'"),
        ({"out": 5}, TypeError, r"out=5 \(of type int\)"),
    ],
)
def test_sweep_config_validation(kwargs, exc, pattern):
    with pytest.raises(exc, match=pattern):
        SweepConfig(**kwargs)


def test_suggest_implies_per_layer_and_replace_revalidates():
    cfg = SweepConfig(models=["digits_mlp"], suggest=True)
    assert cfg.per_layer
    assert cfg.replace(seeds=(1, 2)).seeds == (1, 2)
    with pytest.raises(ValueError, match="executor"):
        cfg.replace(executor="nope")


def test_default_file_is_the_default_config():
    from_file = load_config(ROOT / "experiments" / "digits.toml")
    default = sweep.default_config()
    assert [r.config_hash for r in from_file.run_configs()] == [
        r.config_hash for r in default.run_configs()
    ]
    assert len(default.run_configs()) == 33  # digits CNN, digits MLP, tiny LM x 11 policies


@pytest.mark.parametrize(
    "name", ["digits.toml", "digits_sensitivity.toml", "synthetic_mlp_gpu.toml"]
)
def test_experiment_files_load(name):
    cfg = load_config(ROOT / "experiments" / name)
    assert cfg.variants[0].label == "float32"


def test_json_file_and_overrides(tmp_path):
    path = tmp_path / "s.json"
    path.write_text(json.dumps({
        "sweep": {"seeds": [1, 2], "policies": ["float32", "bfloat16"]},
        "models": [{"name": "m", "factory": "tests.sweep._helpers:tiny_factory"}],
    }))  # fmt: skip
    cfg = load_config(path, quick=True, out=str(tmp_path / "o"))
    assert cfg.seeds == (1, 2)
    assert cfg.quick
    assert [m.resolved_name for m in cfg.models] == ["m"]


def test_bad_files(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[sweep\n")
    with pytest.raises(ValueError, match="valid TOML"):
        load_config(bad)
    unknown = tmp_path / "u.toml"
    unknown.write_text("[sweep]\nseedz = [0]\n")
    with pytest.raises(ValueError, match=r"\['seedz'\]"):
        load_config(unknown)
    with pytest.raises(ValueError, match=r"\.yaml"):
        (tmp_path / "x.yaml").write_text("")
        load_config(tmp_path / "x.yaml")
    with pytest.raises(FileNotFoundError, match=r"missing\.toml"):
        load_config(tmp_path / "missing.toml")
    with pytest.raises(ValueError, match=r"\['extra'\]"):
        config_from_dict({"extra": 1})


def test_config_hash_is_stable_and_sensitive():
    cfg = SweepConfig(models=["digits_mlp"], policies=["float32", "int8"], seeds=(0, 1))
    runs = cfg.run_configs()
    hashes = [r.config_hash for r in runs]
    assert len(set(hashes)) == 4
    again = SweepConfig(models=["digits_mlp"], policies=["float32", "int8"], seeds=(0, 1))
    assert hashes == [r.config_hash for r in again.run_configs()]
    other = SweepConfig(models=[{"factory": "digits_mlp", "epochs": 3}], policies=["float32"])
    assert other.run_configs()[0].config_hash != hashes[0]


def test_unpicklable_factory_is_reported_before_work():
    cfg = SweepConfig(models=[lambda dtype=None: None], policies=["float32"])
    with pytest.raises(ValueError, match="picklable model factory"):
        cfg.check_picklable()


@pytest.mark.parametrize(
    ("make", "exc", "pattern"),
    [
        (lambda: Variant("", "float16"), TypeError, r"label=''"),
        (lambda: Variant("x", 16), TypeError, r"policy=16 \(of type int\)"),
        (
            lambda: Variant("x", "int8_from_float32", ["weight_only"]),
            TypeError,
            r"quantize_config=\['weight_only'\]",
        ),
        (lambda: ModelSpec("digits_mlp", lr=0), ValueError, r"lr=0 \(of type int\)"),
        (lambda: ModelSpec("digits_mlp", batch_size=True), ValueError, r"batch_size=True"),
        (lambda: ModelSpec("digits_mlp", kwargs=[1]), TypeError, r"kwargs=\[1\]"),
        (lambda: ModelSpec(7), TypeError, r"factory=7 \(of type int\)"),
        (
            lambda: resolve_model({"factory": "digits_mlp", "data": "mnist"}),
            ValueError,
            r"data='mnist'",
        ),
        (
            lambda: resolve_model(
                {"factory": "digits_mlp", "data": "tests.sweep._helpers:TINY_NOT_THERE"}
            ),
            ValueError,
            "TINY_NOT_THERE",
        ),
        (lambda: resolve_model("json:__doc__"), TypeError, r"to be callable"),
    ],
)
def test_more_bad_inputs(make, exc, pattern):
    with pytest.raises(exc, match=pattern):
        make()


# -- configs are values: parsed once, built whole, never changed -----------------------------
def test_variant_holds_the_parsed_policy():
    import dataclasses

    import mpq

    v = resolve_variant("int4-g32")
    assert isinstance(v.dtype_policy, mpq.policy.QuantizedDTypePolicy)
    assert (v.dtype_policy.block_size, v.policy) == (32, "int4/32_from_float32")
    from_object = Variant("g32", mpq.policy.get("int4/32_from_float32"))
    assert from_object.policy == "int4/32_from_float32"
    assert from_object.dtype_policy == v.dtype_policy
    # `policy` keeps the name as given: the run's identity in records and hashes
    assert Variant("i4", "int4_from_float32").policy == "int4_from_float32"
    changed = dataclasses.replace(v, policy="int8_from_float32", quantize_config=None)
    assert changed.dtype_policy.quantization_mode == "int8" and changed.label == "int4-g32"
    with pytest.raises(dataclasses.FrozenInstanceError):
        v.policy = "float16"


def test_a_policy_map_is_not_a_variant():
    import mpq

    pmap = mpq.policy.DTypePolicyMap("float32", {"dense": "int8_from_float32"})
    with pytest.raises(TypeError, match=r"Received: policy=.*\(of type DTypePolicyMap\)"):
        Variant("map", pmap)


def test_a_run_parses_no_policy_name_of_its_variant(monkeypatch):
    """The variant's policy is parsed once, by its constructor: no code of the sweep parses the
    name again while planning and running (the layers may resolve their own policies)."""
    import sys

    import mpq
    from mpq.sweep.experiment import run_one
    from mpq.sweep.plan import make_plan

    cfg = SweepConfig(models=[{"name": "t", "factory": "tests.sweep._helpers:tiny_mpq_factory",
                               "epochs": 1}], policies=["int8"], quick=True)  # fmt: skip
    sweep_dir = str(Path(sweep.__file__).parent)
    real_get, parsed = mpq.policy.get, []

    def counting_get(identifier=None):
        caller = sys._getframe(1).f_code.co_filename
        if caller.startswith(sweep_dir) and identifier == "int8_from_float32":
            parsed.append(caller)
        return real_get(identifier)

    monkeypatch.setattr(mpq.policy, "get", counting_get)
    (rc,) = make_plan(cfg).runs
    record = run_one(rc)
    assert record.status == "ok", record.error
    assert parsed == []


def test_sweep_config_is_built_whole_and_replaced_not_changed(tmp_path):
    import dataclasses

    cfg = SweepConfig(models="digits_mlp", policies="float32,int8", seeds=3, out=tmp_path)
    assert (cfg.seeds, cfg.out, cfg.policies) == ((3,), str(tmp_path), ("float32", "int8"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seeds = (1,)
    again = dataclasses.replace(cfg, quick=True)
    assert again.quick and again.variants == cfg.variants and again.models == cfg.models
    assert [r.config_hash for r in again.replace(quick=False).run_configs()] == [
        r.config_hash for r in cfg.run_configs()
    ]
    assert resolve_model("digits_cnn") == resolve_model(ModelSpec("digits_cnn", data="digits"))


def test_a_name_that_resolves_to_a_policy_map_is_refused(monkeypatch):
    import mpq

    pmap = mpq.policy.DTypePolicyMap("float32", {"dense": "int8_from_float32"})
    monkeypatch.setattr(mpq.policy, "get", lambda identifier=None: pmap)
    with pytest.raises(TypeError, match=r"Expected one policy per variant .* Received: "
                                        r"policy='my_map'"):  # fmt: skip
        Variant("map", "my_map")
