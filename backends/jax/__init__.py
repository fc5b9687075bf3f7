"""The jax backend: adapter.py, declared in backend.toml."""
