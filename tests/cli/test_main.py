"""The `faceprompt` entry points: the console script and `python -m faceprompt.cli`."""

import shutil
import subprocess
import sys
from pathlib import Path


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "faceprompt"
    assert script.exists() or shutil.which("faceprompt")
    result = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.startswith("faceprompt ")


def test_python_dash_m_runs_the_cli():
    result = subprocess.run([sys.executable, "-m", "faceprompt.cli", "--version"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0 and result.stdout.startswith("faceprompt ")
