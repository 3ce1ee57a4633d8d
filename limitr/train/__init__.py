"""Training: the study dataset, distributed helpers, validation, checkpoints and the loop.

Import the submodules directly (``limitr.train.loop``, ``limitr.train.validate``); this package
imports nothing heavy so that command-line help stays fast.
"""
