"""Reports of training runs: metric pages, evaluation videos, results tables and an automatic diagnosis.

* ``rlft.report.runs``: reading run / pipeline directories (``expand_runs``, ``Metrics``, ``ReportError``);
* ``rlft.report.diagnose``: rules over the metric series (``diagnose``, ``LiveDiagnosis`` for the training loop);
* ``rlft.report.plots``: matplotlib pages grouped like a person reads them (critic, actor, temperature/entropy,
  weights/advantages, evaluation);
* ``rlft.report.build``: ``build_report(paths, out)`` -> ``<out>/index.html`` (``rlft report`` on the command line).
"""

from rlft.report.runs import Metrics, ReportError, expand_runs, load_run

__all__ = ["Metrics", "ReportError", "expand_runs", "load_run"]
