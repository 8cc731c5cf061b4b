"""``python -m rank1.pipeline``: the main job (what ``run_all.sh`` runs)."""

import sys

from rank1.pipeline import main

sys.exit(main())
