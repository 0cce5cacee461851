"""The option vocabulary both halves share: which keys a param group may carry, which optimizer
reads which, and what values are valid.

Bottom layer above :mod:`paramwise.errors`: :mod:`paramwise.grouping` sets these keys per
parameter, :mod:`paramwise.step` reads them at every step, and neither half imports the other.
"""
