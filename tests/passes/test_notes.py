"""The notes passes record reach manifest.json whole; an undeclared note is refused."""

import dataclasses
from types import SimpleNamespace

import pytest

from qpasses.compiler import manifest
from qpasses.passes.notes import Notes


def test_the_manifest_keeps_every_note():
    notes = Notes()
    for f in dataclasses.fields(Notes):
        getattr(notes, f.name)["sentinel"] = f.name
    recipe = SimpleNamespace(name="r", sha256="0", text="")
    loaded = SimpleNamespace(name="m", kind="tiny", source={})
    out = manifest(recipe, [], loaded, {"qpasses.versions": "{}"}, notes)
    dropped = [f.name for f in dataclasses.fields(Notes) if out.get(f.name, {}).get("sentinel") != f.name]
    assert not dropped, f"manifest.json drops the notes {dropped}"


def test_an_undeclared_note_is_an_error():
    with pytest.raises(AttributeError):
        Notes().lowrank = {}  # a typo of lowrank_budget would otherwise vanish
