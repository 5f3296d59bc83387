"""Evaluation: metrics, threshold search, chunk-to-track aggregation, reports; ``python -m eval``.

Entry points: ``eval.runner.evaluate_model`` (also the trainer's validation),
``eval.thresholds.search_thresholds``, ``eval.report.write_report``. See docs/eval.md.
"""
