"""``tfcompress demo``: the whole compression pipeline on sklearn's bundled digits.

* :func:`run_demo` trains, prunes during ``fit``, rebuilds, quantizes with PACT, exports
  and measures (:mod:`tfcompress.demo.pipeline`); it returns a :class:`DemoResult`.
* :func:`write_report` renders that result as ``report.md`` with PNG plots
  (:mod:`tfcompress.demo.report`, which also holds the table helpers the CLI prints).

Example:
  >>> from tfcompress.demo import DemoConfig, run_demo, write_report
  >>> DemoConfig(quick=True).stage_epochs()  # a CI smoke run: one epoch per stage
  {'float': 1, 'prune': 1, 'finetune': 1, 'qat': 1}

  The run itself takes about a minute even in quick mode, so it is not run as a doctest:

  >>> result = run_demo(DemoConfig(output="demo", quick=True))  # doctest: +SKIP
  >>> result.stage("slim").params < result.stage("float").params  # doctest: +SKIP
  True
  >>> write_report(result)  # doctest: +SKIP
  PosixPath('demo/report.md')
"""

from tfcompress.demo.pipeline import DemoConfig, DemoResult, StageResult, run_demo
from tfcompress.demo.report import write_report

__all__ = ["DemoConfig", "DemoResult", "StageResult", "run_demo", "write_report"]
