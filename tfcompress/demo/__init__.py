"""``tfcompress demo``: the whole compression pipeline on sklearn's bundled digits.

* :func:`run_demo` trains, prunes, rebuilds, quantizes, exports and measures
  (:mod:`tfcompress.demo.pipeline`).
* :func:`write_report` renders the result as ``report.md`` with PNG plots
  (:mod:`tfcompress.demo.report`).

Example:
  >>> from tfcompress.demo import DemoConfig, run_demo, write_report
  >>> result = run_demo(DemoConfig(output="demo", quick=True))  # doctest: +SKIP
  >>> print(format_table(result))  # doctest: +SKIP
  >>> write_report(result)  # doctest: +SKIP
"""

from tfcompress.demo.pipeline import DemoConfig, DemoResult, StageResult, run_demo

__all__ = ["DemoConfig", "DemoResult", "StageResult", "run_demo"]
