"""Results of runs: what one run records, how output trees are read, and the comparison tables.

* :mod:`~gopro_prompts.results.record`: the per-run record, ``<OUTPUT_DIR>/results.json``
  (its fields, writing it atomically, reading it back);
* :mod:`~gopro_prompts.results.capture`: keeps the evaluator's full result dict during a
  Dassl ``test()`` and writes the run's record after the final test;
* :mod:`~gopro_prompts.results.runs`: finds run folders under output roots and reads each
  one's result (``results.json``, else the newest log);
* :mod:`~gopro_prompts.results.tables`: the base-to-new, cross-dataset and
  domain-generalisation tables, their renderers and chart
  (command line: ``python -m gopro_prompts.results.tables``);
* :mod:`~gopro_prompts.results.published`: the figures printed by the papers, for
  comparison (not our measurements).

Reading results needs no torch: only writing a record imports it (for the version fields).
"""
