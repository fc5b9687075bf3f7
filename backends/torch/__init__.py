"""The torch backend: adapter.py, declared in backend.toml."""
