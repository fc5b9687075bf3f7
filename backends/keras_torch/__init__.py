"""The keras_torch backend (Keras 3 on PyTorch): adapter.py, declared in backend.toml."""
