"""The CLI dispatcher: unknown verbs and flags get one error line, a hint and a code."""
import subprocess
import sys

import util


def _hpcrun(*args):
    return subprocess.run([util.HPCRUN, *args], capture_output=True, text=True)


def test_version():
    cp = _hpcrun("--version")
    assert cp.returncode == 0
    assert cp.stdout.startswith("hpcrun ")


def test_unknown_verb_suggests():
    cp = _hpcrun("imagez")
    assert cp.returncode == 2
    assert cp.stderr.splitlines()[0] == "hpcrun: error: unknown command 'imagez'"
    assert "hint: did you mean 'hpcrun images'?" in cp.stderr


def test_unknown_global_flag():
    cp = _hpcrun("--bogus", "run")
    assert cp.returncode == 2
    assert "hpcrun: error: unknown option '--bogus'" in cp.stderr


def test_python_m_entry():
    cp = subprocess.run([sys.executable, "-m", "hpcrun", "--version"], capture_output=True, text=True)
    assert cp.returncode == 0 and "hpcrun" in cp.stdout
