"""The fused CPU updates: the optimizer's own update (Adam, AdamW, SGD, RMSprop, Adagrad) and the
regularizers in one pass over each chunk, in an eager form and in the form ``torch.compile``
traces (:mod:`paramwise.step.fused.update` says when they run).
"""
