"""Options of stage 6: the report (``6_report/6.1_write_report.py``) and the feature pages (``6.0``)."""

from __future__ import annotations

from dataclasses import dataclass

from rank1.config import option
from rank1.report.neuronpedia import check_id
from rank1.runs import RunOptions


@dataclass
class ReportConfig:
    """Options of the report (profile table ``[report]``)."""

    profile: str = option("profile the defaults came from", "tiny")
    run: str | None = option("run whose artifacts the claims read (default: the run found in the most stage folders)")
    out: str | None = option("output folder (default: reports/<profile>)")

    def __post_init__(self):
        if self.run is not None and (not self.run or "/" in self.run):
            raise ValueError(f"--run must be a run folder name, got {self.run!r}")


@dataclass
class FeaturePagesConfig(RunOptions):
    """Options of the feature pages (profile table ``[feature_pages]``)."""

    n_examples: int = option("top examples shown per feature", 20)
    context: int = option("tokens shown each side of an example's target token", 16)
    neuronpedia_model: str | None = option("Neuronpedia model id of the export (default: from the base model's "
                                           "name, lowercased)")
    neuronpedia_batch: int = option("records per batch file of the Neuronpedia export", 128)
    out: str | None = option("output folder (default: results/<profile>/feature_pages/<run>)")

    def __post_init__(self):
        for name in ("n_examples", "neuronpedia_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if self.context < 0:
            raise ValueError(f"--context must be >= 0, got {self.context}")
        if self.neuronpedia_model is not None:
            check_id("--neuronpedia_model", self.neuronpedia_model)
