"""What runs in a step: the regularizers' math, the step scale of each optimizer, lowering to the
optimizer's own options, the step hooks that read each param group's options, and the fused
updates (:mod:`paramwise.step.fused`).

Knows nothing of models, selectors or rules: it reads the keys of
:mod:`paramwise.options` from plain ``torch.optim`` param groups, so it runs on any optimizer,
however its groups were built.
"""
