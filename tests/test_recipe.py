import dataclasses
from pathlib import Path

import pytest

from qpasses.errors import RecipeError
from qpasses.passes.registry import PASSES
from qpasses.passes.weight_format import WeightFormatSettings
from qpasses.recipe import COMPOSED, DEFAULT_RECIPE, MOVED_TO_BENCH, builtin_dir, builtin_recipes, load_recipe, parse

RTN = {"int4-w4a16-rtn", "mxfp4-w4a16-rtn", "mxfp4-w4a8-rtn", "mxfp4-w4a4-rtn", "int4-w4a4-rtn"}
BENCH = Path(__file__).resolve().parent.parent / "bench" / "recipes"
ENDING = ["lower_linears", "fuse_linears", "fuse_norms", "fuse_attention"]


def test_builtin_recipes_are_fp_the_composed_ones_and_their_rtn_baselines():
    assert set(builtin_recipes()) == {"fp", *COMPOSED, *RTN}


def test_builtin_recipes_load_and_instantiate():
    names = builtin_recipes()
    for name, desc in names.items():
        assert desc, f"{name} has no description"
        load_recipe(name).instantiate()


def test_set_overrides_a_pass_setting():
    r = load_recipe("int4-w4a16-rtn").with_sets(["quantize_weights.block_size=32", "lower_linears.target=qdq"])
    passes = r.instantiate()
    assert passes[0].settings.block_size == 32 and passes[1].settings.target == "qdq"
    assert r.sha256 != load_recipe("int4-w4a16-rtn").sha256


@pytest.mark.parametrize("text, msg", [
    ('[[pass]]\nname = "no_such_pass"', "unknown pass 'no_such_pass'"),
    ('[[pass]]\nname = "quantize_weights"\nblock_size = 100', "block_size 100"),
    ('[[pass]]\nname = "quantize_weights"\nbits = 3', "has no setting bits"),
    ('[[pass]]\nname = "lower_linears"\ntarget = "tpu"', "target 'tpu'"),
    ('bogus = 1', "unknown key"),
    ('[[pass]]\nname = ', "not valid TOML"),
    ('[[pass]]\nname = "quantize_weights"\n[[override]]\nmatch = "*.v_proj"\npass = "lower_linears"\n', "does not run"),
    ('[[pass]]\nname = "quantize_weights"\n[[override]]\nmatch = "*.v_proj"\npass = "quantize_weights"\n'
     'block_size = 7\n', "block_size 7"),
])
def test_bad_recipes_say_what_is_wrong(text, msg):
    with pytest.raises(RecipeError, match=msg):
        parse(text, "bad").instantiate()


def test_bad_set_and_unknown_recipe():
    with pytest.raises(RecipeError, match="expected pass.key=value"):
        load_recipe("fp").with_sets(["nonsense"])
    with pytest.raises(RecipeError, match="has no pass 'lower_linears'"):
        load_recipe("fp").with_sets(["lower_linears.target=qdq"])
    with pytest.raises(RecipeError, match="unknown recipe 'nope'.*int4-w4a16-rtn"):
        load_recipe("nope")
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe("/no/such/recipe.toml")


def test_recipe_file_path(tmp_path):
    f = tmp_path / "mine.toml"
    f.write_text('description = "mine"\nignore = ["lm_head"]\n[[pass]]\nname = "quantize_weights"\nformat = "mxfp4"\n')
    r = load_recipe(str(f))
    assert r.name == "mine" and r.ignore == ("lm_head",)
    assert r.instantiate()[0].settings.weight_format().block_size == 32


def test_the_default_is_a_composed_recipe_and_every_composed_one_is_built_in():
    assert DEFAULT_RECIPE in COMPOSED and set(COMPOSED) <= set(builtin_recipes())


@pytest.mark.parametrize("name", sorted(MOVED_TO_BENCH))
def test_a_moved_recipe_says_where_it_went(name):
    with pytest.raises(RecipeError) as e:
        load_recipe(name)
    path = f"bench/recipes/{name}.toml"
    assert str(e.value) == (f"recipe {name!r} moved to {path} (ablation recipes are no longer built in); "
                            f"run it with --recipe {path}")
    assert (BENCH.parent.parent / path).is_file()


def test_bench_holds_exactly_the_moved_recipes():
    assert {f.stem for f in BENCH.glob("*.toml")} == MOVED_TO_BENCH
    assert not MOVED_TO_BENCH & set(builtin_recipes())


@pytest.mark.parametrize("path", sorted(BENCH.glob("*.toml")), ids=lambda p: p.stem)
def test_every_bench_recipe_parses_and_instantiates(path):
    r = load_recipe(str(path))
    assert r.name == path.stem and r.description
    r.instantiate()


def test_the_shared_ending_expands_in_place_into_the_recorded_text():
    raw = (builtin_dir() / "int4-w4a16-rtn.toml").read_text()
    fragment = (builtin_dir() / "fragments" / "deploy-qpasses.toml").read_text()
    assert '[[pass]]\nuse = "deploy-qpasses"\n' in raw
    r = load_recipe("int4-w4a16-rtn")
    assert [n for n, _ in r.passes] == ["quantize_weights", *ENDING]
    assert r.text == raw.replace('[[pass]]\nuse = "deploy-qpasses"\n', fragment) and "use =" not in r.text
    assert parse(r.text, "again").passes == r.passes  # the recorded text is a complete recipe
    mid = parse('[[pass]]\nname = "quantize_weights"\n\n[[pass]]\nuse = "deploy-qpasses"  # the usual ending\n\n'
                '[[pass]]\nname = "fuse_rotations"\n', "mid")
    assert [n for n, _ in mid.passes] == ["quantize_weights", *ENDING, "fuse_rotations"]


@pytest.mark.parametrize("text, msg", [
    ('[[pass]]\nuse = "deploy-tpu"\n', "use = 'deploy-tpu' names no fragment; fragments: deploy-qpasses"),
    ('[[pass]]\nuse = "deploy-qpasses"\ntarget = "qdq"\n', "must be the only line of its"),
    ('[[pass]]\nname = "quantize_weights"\nuse = "deploy-qpasses"\n', "must be the only line of its"),
])
def test_bad_use_says_what_is_wrong(text, msg):
    with pytest.raises(RecipeError, match=msg):
        parse(text, "bad")


def test_passes_that_quantize_weights_share_one_settings_block():
    fields = [f.name for f in dataclasses.fields(WeightFormatSettings)]
    for name in ("quantize_weights", "optimize_weights", "quantize_embeddings"):
        st = PASSES[name].Settings()
        assert isinstance(st, WeightFormatSettings), name
        assert {f: getattr(st, f) for f in fields} == dataclasses.asdict(WeightFormatSettings()), name
    for sets in (["optimize_weights.block_size=128"], ["quantize_embeddings.block_size=32"]):
        (pass_name, key), value = sets[0].split("=")[0].split("."), int(sets[0].split("=")[1])
        passes = load_recipe("int4-w4a16").with_sets(sets).instantiate()
        assert getattr(next(p for p in passes if p.name == pass_name).settings, key) == value
    with pytest.raises(RecipeError, match="symmetric int4 or int8"):
        PASSES["quantize_embeddings"](symmetric=False)


@pytest.mark.parametrize("body", ['description = "x"\n[[pass]]\nname = "fuse_norms"\n',
                                  '[[pass]]\nuse = "deploy-qpasses"\n', '[[pass]]\ntarget = "qdq"\n'])
def test_a_fragment_holds_only_named_passes(body, tmp_path, monkeypatch):
    import qpasses.recipe

    (tmp_path / "mine.toml").write_text(body)
    monkeypatch.setattr(qpasses.recipe, "fragments", lambda: {"mine": tmp_path / "mine.toml"})
    with pytest.raises(RecipeError, match="fragment 'mine' must hold only named"):
        parse('[[pass]]\nuse = "mine"\n', "r")
