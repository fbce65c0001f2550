"""The `earmark` console script is installed and answers without a traceback."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from earmark import __version__


def test_console_script_help() -> None:
    exe = shutil.which("earmark", path=str(Path(sys.executable).parent))
    assert exe is not None, "the earmark console script is not installed in this venv"
    done = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and "usage: earmark" in done.stdout
    version = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30)
    assert version.stdout.strip() == f"earmark {__version__}"
