"""The report stage: one Markdown page with figures from results folders (issue 11, point 5).

:mod:`.load` reads rows with their per-query values, :mod:`.findings` computes what the page
states, :mod:`.sentences` and :mod:`.figures` render it, :mod:`.page` assembles ``report.md``.
"""

from vespa_quant.report.page import build_report

__all__ = ["build_report"]
