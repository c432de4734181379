import pytest

from qpasses.errors import RecipeError
from qpasses.recipe import COMPOSED, DEFAULT_RECIPE, builtin_recipes, load_recipe, parse

REQUIRED = {"fp", "int4-w4a16-rtn", "mxfp4-w4a16-rtn", "mxfp4-w4a8-rtn", "mxfp4-w4a4-rtn", "int4-w4a4-rtn"}


def test_builtin_recipes_load_and_instantiate():
    names = builtin_recipes()
    assert REQUIRED <= set(names)
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
    ('[[pass]]\nname = "quantize_weights"\n[[override]]\nmatch = "*.v_proj"\npass = "quantize_weights"\nblock_size = 7\n',
     "block_size 7"),
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
