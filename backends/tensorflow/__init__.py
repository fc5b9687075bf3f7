"""The tensorflow backend: adapter.py, declared in backend.toml."""
