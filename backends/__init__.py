"""One adapter per framework. Each module imports its own framework and nothing else does."""
