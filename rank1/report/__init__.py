"""Stage 6: the report of the main job (``6_report/``), built only from saved artifacts.

``config`` holds the script's config, ``claims`` the paper's claims and the rules of their verdicts, ``render``
the Markdown and HTML pages, ``stage`` reads the results folder and writes ``reports/<profile>/``.
"""

from rank1.report.claims import NA, NO, YES, Claim
from rank1.report.config import ReportConfig
from rank1.report.render import Report, render_html, render_markdown
from rank1.report.stage import build_report, read_times, run_write_report

__all__ = ["NA", "NO", "YES", "Claim", "Report", "ReportConfig", "build_report", "read_times", "render_html",
           "render_markdown", "run_write_report"]
