"""Optimizer checkpoints keyed by parameter name: saving, validating a saved state whole before
anything loads, loading it into regrouped optimizers, and sharded (DCP) loading.
"""
