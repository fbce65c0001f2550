"""Puts the repository root on sys.path: `python benchmarks/x.py` sees only benchmarks/,
and the peer drivers (tools/) live at the root, outside the installed package.

A benchmark imports it first (`import repo_root  # noqa: F401`), before `tools`.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
