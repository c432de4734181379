"""Built-in recipes (recipes/*.toml) and tiny test-model builders. Installed as `qpasses.models`."""
