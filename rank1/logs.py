"""Logging set-up for entry points: one format, rank 0 speaks, the resolved config comes first."""

from __future__ import annotations

import json
import logging
import os

from rank1.artifacts import public_config


def setup_logging(cfg=None, level: int = logging.INFO) -> None:
    rank = int(os.environ.get("RANK", 0))
    logging.basicConfig(level=level if rank == 0 else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if cfg is not None and rank == 0:
        logging.getLogger("config").info("%s %s", type(cfg).__name__,
                                         json.dumps(public_config(cfg), indent=1, default=str))
