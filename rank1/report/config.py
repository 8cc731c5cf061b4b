"""Options of stage 6 (the report): the one config ``6_report/6.0_write_report.py`` parses."""

from __future__ import annotations

from dataclasses import dataclass

from rank1.config import option


@dataclass
class ReportConfig:
    """Options of the report (profile table ``[report]``)."""

    profile: str = option("profile the defaults came from", "tiny")
    run: str | None = option("run whose artifacts the claims read (default: the run found in the most stage folders)")
    out: str | None = option("output folder (default: reports/<profile>)")

    def __post_init__(self):
        if self.run is not None and (not self.run or "/" in self.run):
            raise ValueError(f"--run must be a run folder name, got {self.run!r}")
