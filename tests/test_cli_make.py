"""The Makefile a new user starts with: `make demo` writes where git does not look, and `make`
runs pip only when this checkout is not installed (editable) yet."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def make(*args, cwd=ROOT, **kwargs):
    return subprocess.run(["make", "-s", f"PYTHON={sys.executable}", *args], cwd=cwd, capture_output=True, text=True,
                          **kwargs)


def installed_check(cwd) -> int:
    """Exit status of the Makefile's INSTALLED check, run in `cwd`."""
    code = make("--eval", "print-check: ; @echo \"$$INSTALLED\"", "print-check").stdout
    return subprocess.run([sys.executable, "-c", code], cwd=cwd).returncode


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="needs a git checkout")
def test_make_demo_writes_files_git_ignores():
    plan = make("-n", "demo").stdout
    output = Path(re.search(r"--output (\S+)", plan).group(1))
    assert not output.is_absolute() and output.parts[0] != "."
    for path in (output, output.with_suffix(".json")):
        assert subprocess.run(["git", "check-ignore", "-q", str(path)], cwd=ROOT).returncode == 0, path


def test_install_check_fails_where_this_checkout_is_not_installed(tmp_path):
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    assert installed_check(tmp_path) == 1


def test_make_install_is_silent_once_installed():
    if installed_check(ROOT) != 0:
        pytest.skip("this checkout is not pip-installed in editable mode since pyproject.toml last changed")
    proc = make("install", env=dict(os.environ, PIP_NO_INDEX="1"))
    assert proc.returncode == 0 and proc.stdout == "" and proc.stderr == ""
