"""``tfcompress demo``: the whole compression pipeline on sklearn's bundled digits.

* :func:`run_demo` trains, prunes during ``fit``, rebuilds, quantizes with PACT, exports
  and measures (:mod:`tfcompress.demo.pipeline`); it returns a :class:`DemoResult`.
* :func:`write_report` renders that result as ``report.md`` with PNG plots
  (:mod:`tfcompress.demo.report`, which also holds the table helpers the CLI prints).

Example:
  >>> from tfcompress.demo import DemoConfig, run_demo, write_report
  >>> result = run_demo(DemoConfig(output="demo", quick=True))  # doctest: +SKIP
  >>> result.stage("slim").params < result.stage("float").params  # doctest: +SKIP
  True
  >>> write_report(result)  # doctest: +SKIP
  PosixPath('demo/report.md')
"""

from tfcompress.demo.pipeline import DemoConfig, DemoResult, StageResult, run_demo
from tfcompress.demo.report import write_report

__all__ = ["DemoConfig", "DemoResult", "StageResult", "run_demo", "write_report"]
