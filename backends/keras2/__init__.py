"""The keras2 backend (tf-keras 2 on TensorFlow): adapter.py, declared in backend.toml."""
