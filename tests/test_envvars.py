"""Every HPCRUN_* environment variable hpcrun reads is documented (issue 13).

A variable is either a configuration key's HPCRUN_<KEY>, or listed in the README's
environment-variable table (as a setting, an internal variable or a test hook)."""
from __future__ import annotations

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# C preprocessor names and generated tables, not environment variables
NOT_ENV = re.compile(r"HPCRUN_(F|M|EXIT|PROBE|TIER)_[A-Z0-9_]*|HPCRUN_CORE_H|HPCRUN_NO_TASK_ENTRY|"
                     r"HPCRUN_PYTHON|HPCRUN_VALUE_OPTIONS|HPCRUN_F_|HPCRUN_M_|HPCRUN_EXIT_|"
                     r"HPCRUN_INSTANCE_(STATE|UPPER)_FD|HPCRUN_SITE")


def used() -> set:
    names = set()
    for top in ("hpcrun", "cext", "bin", "benchmarks", "jobscripts", "dev"):   # (what hpcrun reads)
        base = os.path.join(ROOT, top)
        paths = [base] if os.path.isfile(base) else [
            os.path.join(d, f) for d, _, fs in os.walk(base) for f in fs]
        for p in paths:
            if not p.endswith((".py", ".c", ".h", ".sh")) and os.path.basename(p) not in ("dev", "hpcrun"):
                continue
            if "__pycache__" in p or p.endswith("launcher_options.h"):
                continue
            with open(p, errors="replace") as f:
                text = f.read()
            for m in re.finditer(r"\bHPCRUN_[A-Z0-9_]*[A-Z0-9]\b", text):
                if not NOT_ENV.fullmatch(m.group(0)):
                    names.add(m.group(0))
    return names


def test_every_hpcrun_variable_is_documented():
    from hpcrun import config
    keys = {"HPCRUN_" + k.upper() for k in config.KEYS}
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    table = set(re.findall(r"`(HPCRUN_[A-Z0-9_]+)`", readme.split("<!-- section:envvars -->")[1]
                           .split("<!-- /section:envvars -->")[0]))
    missing = sorted(n for n in used() - keys - table if n != "HPCRUN_KEY")
    assert not missing, f"undocumented HPCRUN_* variables: {missing}"
