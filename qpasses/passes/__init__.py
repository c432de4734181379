"""Passes: one per file, named after what they do; `registry.PASSES` lists them by name."""
