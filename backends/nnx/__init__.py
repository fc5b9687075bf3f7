"""The nnx backend (Flax NNX): adapter.py, declared in backend.toml."""
