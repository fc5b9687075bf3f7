"""The mxnet backend: adapter.py, declared in backend.toml."""
