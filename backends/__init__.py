"""One subpackage per backend: backend.toml declares it, adapter.py translates. Only an
adapter imports its framework; common.declarations finds the declarations."""
