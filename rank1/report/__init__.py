"""Stage 6: the report of the main job (``6_report/``), built only from saved artifacts.

``config`` holds the scripts' configs, ``claims`` the paper's claims and the rules of their verdicts, ``render``
the Markdown and HTML pages, ``stage`` reads the results folder and writes ``reports/<profile>/`` (6.1).
6.0's feature pages: ``features`` joins one direction's artifacts, ``lens`` reads B through the unembedding,
``neuronpedia`` writes the export, ``card`` the model cards, ``pages`` reads the files and writes the folder.
"""

from rank1.report.claims import NA, NO, YES, Claim
from rank1.report.config import FeaturePagesConfig, ReportConfig
from rank1.report.pages import run_feature_pages
from rank1.report.render import Report, render_html, render_markdown
from rank1.report.stage import build_report, read_times, run_write_report

__all__ = ["NA", "NO", "YES", "Claim", "FeaturePagesConfig", "Report", "ReportConfig", "build_report",
           "read_times", "render_html", "render_markdown", "run_feature_pages", "run_write_report"]
