"""Speed benchmarks of the multi-state layers against their bounds, and the report that compares them.

Run ``pytest benchmarks --benchmark-only`` (once per Keras backend, see ``run_cpu.sh``), then
``python -m benchmarks.report RESULTS.json ... --out DIR``. See ``benchmarks/README.md``.
"""
