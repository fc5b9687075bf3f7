"""The MLX backend: adapter.py, declared in backend.toml."""
