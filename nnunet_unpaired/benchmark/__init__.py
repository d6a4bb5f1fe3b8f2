"""Benchmark: every method against vanilla nnU-Net on the same data, splits and training budget.

- :mod:`~nnunet_unpaired.benchmark.registry`: the methods (name, trainer, kind); trainer families register themselves;
- :mod:`~nnunet_unpaired.benchmark.harness`: the steps (data, plan, splits, train per kind, predict with the stock
  ``nnUNetv2_predict``, evaluate, costs, report), resumable through per-step markers;
- :mod:`~nnunet_unpaired.benchmark.metrics`: Dice, HD95, ASSD per case and structure;
- :mod:`~nnunet_unpaired.benchmark.report`: CSV, markdown tables with paired tests, cost ratios, PNG plots;
- :mod:`~nnunet_unpaired.benchmark.cli`: the ``nnunet_unpaired benchmark`` command and its presets.

How to run it and the measured results: docs/benchmarks.md.
"""
