"""The grid pipeline, one module per stage:

* :mod:`~benchmark.grid.plan` - the requested methods, backbones and seeds become cell specs with config hashes;
* :mod:`~benchmark.grid.execute` - an executor computes the pending cells (``local``: in this process);
* :mod:`~benchmark.grid.cell` - one cell from its spec: prune, validate, measure (:mod:`~benchmark.grid.measure`), score;
* :mod:`~benchmark.grid.store` - cells and their files written atomically to the run directory, resumable;
* :mod:`~benchmark.grid.report` - leaderboard tables and plots from the stored cells;

and :mod:`~benchmark.grid.run`, the driver that ties them together.
"""
