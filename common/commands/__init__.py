"""The commands: cli, diff, probe, train, roundtrip, inspect and the test runner.

They drive adapters through common.core and never import a framework themselves.
"""
