"""paramparity's framework-free core: spec, interface, oracle, expectations and reports.

Nothing here imports a deep-learning framework; only ``backends/<name>`` does.
"""
