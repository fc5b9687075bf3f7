"""The model core: spec, oracle, interface, parameter checks and the portable format.

Framework-free: numpy and the standard library only.
"""
