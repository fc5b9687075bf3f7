"""The equinox backend (Equinox on JAX): adapter.py, declared in backend.toml."""
