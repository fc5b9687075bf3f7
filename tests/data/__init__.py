"""Committed test files and the scripts that make them."""
