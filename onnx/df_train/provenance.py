"""Which code made an artifact."""

import subprocess
from pathlib import Path


def git_commit() -> str:
    """This checkout's commit, `+dirty` when its tracked files differ from it; "unknown" outside git."""
    here = Path(__file__).parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=here)
        if out.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], capture_output=True, cwd=here).returncode != 0
        return out.stdout.strip() + ("+dirty" if dirty else "")
    except OSError:
        return "unknown"
