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

Built-in recipes live in models/recipes (installed as qpasses.models/recipes); any other path to
a .toml file works too. `--set pass.key=value` changes a setting of the named pass.
"""

from __future__ import annotations

import hashlib
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from qpasses.errors import RecipeError
from qpasses.passes.base import Override

TOP_KEYS = {"description", "ignore", "pass", "override"}
# The composed recipes (every method in its best measured order, embedding and lm_head quantized
# too; docs/results.md), one per setting, and the one `qpasses run` uses when none is named.
COMPOSED = ("int4-w4a16", "mxfp4-w4a16", "mxfp4-w4a8", "mxfp4-w4a4", "int4-w4a4")
DEFAULT_RECIPE = "int4-w4a16"


def builtin_dir():
    return resources.files("qpasses.models") / "recipes"


def builtin_recipes() -> dict[str, str]:
    """name -> one-line description of every built-in recipe."""
    out = {}
    for f in sorted(builtin_dir().iterdir(), key=lambda p: p.name):
        if f.name.endswith(".toml"):
            out[f.name[:-5]] = parse(f.read_text(), f.name[:-5]).description
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

    def with_sets(self, sets: list[str]) -> "Recipe":
        """Apply `pass.key=value` assignments (values parsed as TOML, else taken as strings)."""
        passes = [(n, dict(s)) for n, s in self.passes]
        for item in sets:
            if "=" not in item or "." not in item.split("=", 1)[0]:
                raise RecipeError(f"--set {item!r}: expected pass.key=value, e.g. quantize_weights.block_size=32")
            lhs, raw = item.split("=", 1)
            pass_name, key = lhs.strip().rsplit(".", 1)
            hits = [s for n, s in passes if n == pass_name]
            if not hits:
                raise RecipeError(f"--set {item!r}: recipe {self.name!r} has no pass {pass_name!r}; it has {[n for n, _ in passes]}")
            for s in hits:
                s[key] = _parse_value(raw)
        text = self.text + "".join(f"\n# --set {s}" for s in sets)
        return Recipe(self.name, self.description, passes, self.ignore, self.overrides, text)

    def instantiate(self) -> list:
        from qpasses.passes.registry import PASSES

        out = []
        for name, settings in self.passes:
            if name not in PASSES:
                raise RecipeError(f"recipe {self.name!r}: unknown pass {name!r}; known passes: {', '.join(sorted(PASSES))}")
            out.append(PASSES[name](**settings))
        known = {p.name for p in out}
        for ov in self.overrides:
            if ov.pass_name not in known:
                raise RecipeError(f"recipe {self.name!r}: override names pass {ov.pass_name!r}, which the recipe does not run")
            PASSES[ov.pass_name](**ov.settings)  # validates the override's keys and values
        return out


def _parse_value(raw: str):
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw.strip()


def parse(text: str, name: str) -> Recipe:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise RecipeError(f"recipe {name!r} is not valid TOML: {e}") from None
    unknown = set(data) - TOP_KEYS
    if unknown:
        raise RecipeError(f"recipe {name!r}: unknown key(s) {sorted(unknown)}; allowed: {sorted(TOP_KEYS)}")
    passes = []
    for i, p in enumerate(data.get("pass", [])):
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
    f = builtin_dir() / f"{ref}.toml"
    if not f.is_file():
        raise RecipeError(f"unknown recipe {ref!r}; built-in recipes: {', '.join(builtin_recipes())} (or pass a .toml path)")
    return parse(f.read_text(), ref)
