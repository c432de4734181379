"""Recipes are data: a TOML file naming an ordered list of passes with their settings.

    description = "INT4 weight-only RTN, symmetric, group 128, lowered to our runtime op"
    ignore = ["lm_head"]                 # glob patterns on site names kept in float

    [[pass]]
    name = "quantize_weights"
    format = "int4"
    block_size = 128

    [[pass]]
    name = "lower_linears"
    target = "qpasses"                 # or "matmulnbits" / "qdq": stock onnxruntime only

    [[override]]                         # per-site settings of one pass
    match = ["*.v_proj"]
    pass = "quantize_weights"
    block_size = 32

A `[[pass]]` whose only line is `use = "NAME"` stands for the passes of the fragment
models/recipes/fragments/NAME.toml (only [[pass]] tables, no nesting), spliced in at that place:

    [[pass]]
    use = "deploy-qpasses"               # lower_linears target="qpasses", fuse_linears, fuse_norms, fuse_attention

The splice is textual, so `Recipe.text` (what the manifest records and `sha256` hashes) is the
expanded recipe, a self-contained TOML that parses to the same passes.

Built-in recipes live in models/recipes (installed as qpasses.models/recipes): `fp`, the composed
recipes and their round-to-nearest baselines. Any other path to a .toml file works too; the
ablation and single-method recipes are in bench/recipes, next to the benchmarks that run them.
`--set pass.key=value` changes a setting of the named pass.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from qpasses.errors import RecipeError
from qpasses.passes.base import Override

TOP_KEYS = {"description", "ignore", "pass", "override"}
# The composed recipes (every method in its best measured order, embedding and lm_head quantized
# too; docs/results.md), one per setting, and the one `qpasses run` uses when none is named.
COMPOSED = ("int4-w4a16", "mxfp4-w4a16", "mxfp4-w4a8", "mxfp4-w4a4", "int4-w4a4")
DEFAULT_RECIPE = "int4-w4a16"
# Once built in, now bench/recipes/NAME.toml: the ablation and single-method recipes.
MOVED_TO_BENCH = frozenset("""
    int4-w4a16-gptq int4-w4a16-mse int4-w4a16-piso int4-w4a16-piso-gptq int4-w4a16-qer int4-w4a16-rtn-full
    int4-w4a16-srr int4-w4a4-hadamard int4-w4a4-online int4-w4a4-smoothrot-trained int4-w4a8-rtn
    mxfp4-w4a16-gptq mxfp4-w4a16-mse mxfp4-w4a16-piso mxfp4-w4a16-piso-gptq mxfp4-w4a16-qer
    mxfp4-w4a16-rtn-full mxfp4-w4a16-srr mxfp4-w4a16-torq mxfp4-w4a4-block32 mxfp4-w4a4-hadamard
    mxfp4-w4a4-online mxfp4-w4a4-online-block32 mxfp4-w4a4-qer mxfp4-w4a4-smoothrot mxfp4-w4a4-smoothrot-search
    mxfp4-w4a4-smoothrot-trained mxfp4-w4a4-srr mxfp4-w4a4-torq mxfp4-w4a4-torq-l2 mxfp4-w4a4-torq-l2-online
    mxfp4-w4a4-torq-online mxfp4-w4a8-piso-gptq mxfp4-w4a8-rtn-full rotate-hadamard rotate-torq
""".split())
# `[[pass]]` and, on the next line, only `use = "NAME"` (a trailing comment allowed)
USE = re.compile(r'^\[\[pass\]\][ \t]*\n[ \t]*use[ \t]*=[ \t]*"([^"\n]*)"[ \t]*(?:#[^\n]*)?(?:\n|\Z)', re.M)
# what may follow it: blank or comment lines, then the next table or the end
BLANK_THEN_TABLE = re.compile(r'(?:[ \t]*(?:#[^\n]*)?\n)*[ \t]*(?:\[|(?:#[^\n]*)?\Z)')
USE_ALONE = "must be the only line of its [[pass]], on the line after it"


def builtin_dir() -> Path:
    # the package's own folder: resources.files() may merge a namespace path of several checkouts
    from qpasses import models

    return Path(models.__file__).parent / "recipes"


def fragments() -> dict[str, Path]:
    return {f.stem: f for f in sorted((builtin_dir() / "fragments").glob("*.toml"))}


def builtin_recipes() -> dict[str, str]:
    """name -> one-line description of every built-in recipe."""
    out = {}
    for f in sorted(builtin_dir().glob("*.toml")):
        out[f.stem] = parse(f.read_text(), f.stem).description
    return out


@dataclass
class Recipe:
    name: str
    description: str
    passes: list[tuple[str, dict]]
    ignore: tuple[str, ...] = ()
    overrides: tuple[Override, ...] = ()
    text: str = field(default="", repr=False)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    def with_sets(self, sets: list[str]) -> Recipe:
        """Apply `pass.key=value` assignments (values parsed as TOML, else taken as strings)."""
        passes = [(n, dict(s)) for n, s in self.passes]
        for item in sets:
            if "=" not in item or "." not in item.split("=", 1)[0]:
                raise RecipeError(f"--set {item!r}: expected pass.key=value, e.g. quantize_weights.block_size=32")
            lhs, raw = item.split("=", 1)
            pass_name, key = lhs.strip().rsplit(".", 1)
            hits = [s for n, s in passes if n == pass_name]
            if not hits:
                raise RecipeError(f"--set {item!r}: recipe {self.name!r} has no pass {pass_name!r}; "
                                  f"it has {[n for n, _ in passes]}")
            for s in hits:
                s[key] = _parse_value(raw)
        text = self.text + "".join(f"\n# --set {s}" for s in sets)
        return Recipe(self.name, self.description, passes, self.ignore, self.overrides, text)

    def instantiate(self) -> list:
        from qpasses.passes.registry import PASSES

        out = []
        for name, settings in self.passes:
            if name not in PASSES:
                raise RecipeError(f"recipe {self.name!r}: unknown pass {name!r}; "
                                  f"known passes: {', '.join(sorted(PASSES))}")
            out.append(PASSES[name](**settings))
        known = {p.name for p in out}
        for ov in self.overrides:
            if ov.pass_name not in known:
                raise RecipeError(f"recipe {self.name!r}: override names pass {ov.pass_name!r}, "
                                  "which the recipe does not run")
            PASSES[ov.pass_name](**ov.settings)  # validates the override's keys and values
        return out


def _parse_value(raw: str):
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw.strip()


def _toml(text: str, what: str) -> dict:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise RecipeError(f"{what} is not valid TOML: {e}") from None


def expand(text: str, name: str) -> str:
    """The recipe text with every `[[pass]] use = "F"` replaced by the text of fragment F."""
    known = fragments()

    def splice(m: re.Match) -> str:
        if not BLANK_THEN_TABLE.match(text, m.end()):
            raise RecipeError(f"recipe {name!r}: `use = {m[1]!r}` {USE_ALONE}")
        if m[1] not in known:
            raise RecipeError(f"recipe {name!r}: use = {m[1]!r} names no fragment; fragments: {', '.join(known)}")
        body = known[m[1]].read_text()
        data = _toml(body, f"fragment {m[1]!r}")
        if set(data) != {"pass"} or USE.search(body) or any("name" not in p for p in data["pass"]):
            raise RecipeError(f"fragment {m[1]!r} must hold only named [[pass]] tables (no `use`)")
        return body
    return USE.sub(splice, text)


def parse(text: str, name: str) -> Recipe:
    text = expand(text, name)
    data = _toml(text, f"recipe {name!r}")
    unknown = set(data) - TOP_KEYS
    if unknown:
        raise RecipeError(f"recipe {name!r}: unknown key(s) {sorted(unknown)}; allowed: {sorted(TOP_KEYS)}")
    passes = []
    for i, p in enumerate(data.get("pass", [])):
        if "use" in p:
            raise RecipeError(f"recipe {name!r}: [[pass]] number {i + 1}: `use = {p['use']!r}` {USE_ALONE}")
        if "name" not in p:
            raise RecipeError(f"recipe {name!r}: [[pass]] number {i + 1} has no name")
        p = dict(p)
        passes.append((p.pop("name"), p))
    overrides = []
    for o in data.get("override", []):
        o = dict(o)
        match, pass_name = o.pop("match", None), o.pop("pass", None)
        if not match or not pass_name:
            raise RecipeError(f"recipe {name!r}: every [[override]] needs match = [...] and pass = \"...\"")
        overrides.append(Override(tuple([match] if isinstance(match, str) else match), pass_name, o))
    ignore = data.get("ignore", [])
    return Recipe(name, data.get("description", ""), passes, tuple([ignore] if isinstance(ignore, str) else ignore),
                  tuple(overrides), text)


def load_recipe(ref: str) -> Recipe:
    """A built-in recipe name or a path to a .toml file."""
    path = Path(ref)
    if ref.endswith(".toml") or path.exists():
        if not path.is_file():
            raise RecipeError(f"recipe file {ref} does not exist")
        return parse(path.read_text(), path.stem)
    if ref in MOVED_TO_BENCH:
        moved = f"bench/recipes/{ref}.toml"
        raise RecipeError(f"recipe {ref!r} moved to {moved} (ablation recipes are no longer built in); "
                          f"run it with --recipe {moved}")
    f = builtin_dir() / f"{ref}.toml"
    if not f.is_file():
        raise RecipeError(f"unknown recipe {ref!r}; built-in recipes: {', '.join(builtin_recipes())} "
                          "(or pass a .toml path)")
    return parse(f.read_text(), ref)
