"""Helpers for tests that run repository scripts in subprocesses."""

import os
import subprocess
import sys

from rank1.config import REPO_ROOT


def run_script(args, env=None, check=True, **kw):
    """Run a repository script in a subprocess with the test's environment."""
    proc = subprocess.run([sys.executable, *map(str, args)], cwd=REPO_ROOT, env={**os.environ, **(env or {})},
                          capture_output=True, text=True, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc
