"""Logging set-up for entry points: one format, rank 0 speaks, the resolved config comes first."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from rank1.artifacts import public_config
from rank1.errors import Rank1Error


def setup_logging(cfg=None, level: int = logging.INFO) -> None:
    rank = int(os.environ.get("RANK", 0))
    logging.basicConfig(level=level if rank == 0 else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if cfg is not None and rank == 0:
        logging.getLogger("config").info("%s %s", type(cfg).__name__,
                                         json.dumps(public_config(cfg), indent=1, default=str))


def run_main(main: Callable[[Any], None], cfg: Any) -> None:
    """Run a stage's ``main(cfg)``; bad input (missing files, invalid values, no hub access) and failed checks
    (:class:`rank1.errors.Rank1Error`) end in one ``error:`` line and exit status 2 instead of a traceback.
    ``RANK1_DEBUG=1`` shows it."""
    setup_logging(cfg)
    try:
        main(cfg)
    except (Rank1Error, ValueError, OSError) as e:
        if os.environ.get("RANK1_DEBUG"):
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
