"""Training: the configuration (one source of every default; the command line is generated from
it), the loop read top to bottom, the data stream, and the work dir a run writes.

May import every layer below it: runtime, fast, models, io, data, viz, predict, evaluation.
Start with ``loop.py``: :func:`emanet.training.loop.train`. ``python -m emanet.training`` is what
``torchrun`` launches.
"""
