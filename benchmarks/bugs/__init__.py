"""A suite of faulty and healthy PyTorch training setups on digits (see ``benchmarks/bug_suite.py``).

Each case is a :class:`Case` in ``cases.py``: how to build the model, optimizer and loss, how the loop
misbehaves (forgotten ``zero_grad``, shuffled labels, ...), which finding codes count as a detection, and
``verify``: a test on a *plain* run (no trainspect) that the fault really shows (NaN, no learning, dead units
measured directly, ...).
"""
