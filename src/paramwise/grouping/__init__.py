"""Where and what: the module tree's inventory, the selector language, rules and presets, the plan
that resolves every parameter's options, and the param groups built from it.

Knows nothing of what runs in a step: its output is plain param-group dicts whose keys are the
vocabulary of :mod:`paramwise.options`.
"""
