"""Stage 6.1: the report of the main job. Did the paper's claims hold here?

For every claim of the paper (recovery per benchmark; MLP- vs. attention-ablated recovery; the largest-KL
projection type and layers; LoRA vs. MLP monosemanticity; category enrichment; SAE alive share and FVU;
steering magnitude): the paper's number, ours with its CI, and whether it points the same way, by a rule
stated in the report. Then every stage folder under results/<profile>/*/<run>/ with its figures, artifacts,
resolved config and run identity, and each stage's wall time (logs/run_all-<profile>-times.tsv).

Reads only saved artifacts (a stage that has not run shows as missing) and writes reports/<profile>/:
REPORT.md and index.html (opens from disk, no server).

Usage:
    python 6_report/6.1_write_report.py --profile tiny
"""

from rank1.config import parse_config
from rank1.logs import run_main
from rank1.report import NA, NO, YES, ReportConfig, run_write_report


def main(cfg: ReportConfig) -> None:
    rep = run_write_report(cfg)
    verdicts = [c.verdict for c in rep.claims]
    print(f"report of {cfg.profile} (run {rep.run}): {verdicts.count(YES)} yes, {verdicts.count(NO)} no, "
          f"{verdicts.count(NA)} n/a of {len(verdicts)} comparisons; {len(rep.folders)} stage folders")
    print(f"wrote {rep.out / 'REPORT.md'} and {rep.out / 'index.html'}")


if __name__ == "__main__":
    run_main(main, parse_config(ReportConfig, "report", __doc__))
