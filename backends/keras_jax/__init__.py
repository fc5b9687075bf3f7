"""The keras_jax backend (Keras 3 on JAX): adapter.py, declared in backend.toml."""
