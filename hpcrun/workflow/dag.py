"""The sample DAG: CHAINS chains of generate -> compress -> sort, merged in groups of
ten, then merged once more (3*CHAINS + ceil(CHAINS/10) + 1 tasks; 160 chains: 497).

Every task is `sh wf.sh STEP ARGS` with files named as arguments (no redirection, no
pipe in the task's command line), so any prefix wrapper (hpcrun run, hpcrun exec,
ch-run) puts the whole task in the container. wf.sh is POSIX sh with awk, gzip, sort:
busybox's or GNU's give identical .txt outputs (the .gz files may differ by tool).
"""
from __future__ import annotations

import os

WF_SH = r"""#!/bin/sh
# wf.sh STEP ARGS: one task of hpcrun's sample workflow DAG (POSIX sh, awk, gzip, sort).
set -e
export LC_ALL=C
step=$1; shift
case "$step" in
gen)      # gen SEED LINES OUT: LINES random 60-base reads (Park-Miller, exact in doubles)
    awk -v seed="$1" -v n="$2" 'BEGIN { x = seed * 7919 + 1
        for (i = 0; i < n; i++) { s = ""
            for (j = 0; j < 60; j++) { x = (x * 16807) % 2147483647
                s = s substr("ACGT", x % 4 + 1, 1) }
            print s } }' > "$3.part"
    mv "$3.part" "$3" ;;
compress) # compress IN OUT
    gzip -c "$1" > "$2.part"; mv "$2.part" "$2" ;;
sort)     # sort IN.gz OUT
    gzip -dc "$1" | sort > "$2.part"; mv "$2.part" "$2" ;;
merge)    # merge OUT IN...
    out=$1; shift
    sort -m "$@" > "$out.part"; mv "$out.part" "$out" ;;
*) echo "wf.sh: unknown step $step" >&2; exit 2 ;;
esac
"""


def tasks(chains: int, lines: int) -> list:
    """[(outputs, inputs, argv)] in a topological order."""
    out = []
    sorted_files = []
    for i in range(chains):
        out.append(([f"seq_{i}.txt"], [], ["gen", str(i), str(lines), f"seq_{i}.txt"]))
        out.append(([f"seq_{i}.gz"], [f"seq_{i}.txt"], ["compress", f"seq_{i}.txt", f"seq_{i}.gz"]))
        out.append(([f"sorted_{i}.txt"], [f"seq_{i}.gz"], ["sort", f"seq_{i}.gz", f"sorted_{i}.txt"]))
        sorted_files.append(f"sorted_{i}.txt")
    groups = []
    for g in range(0, chains, 10):
        name = f"group_{g // 10}.txt"
        ins = sorted_files[g:g + 10]
        out.append(([name], ins, ["merge", name, *ins]))
        groups.append(name)
    out.append((["all.txt"], groups, ["merge", "all.txt", *groups]))
    return out


def write(d: str, chains: int, lines: int) -> dict:
    """wf.sh, a Makeflow file (wf.mf) and a Snakefile for the DAG in directory d."""
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "wf.sh"), "w") as f:
        f.write(WF_SH)
    os.chmod(os.path.join(d, "wf.sh"), 0o755)
    ts = tasks(chains, lines)
    with open(os.path.join(d, "wf.mf"), "w") as f:
        for outs, ins, argv in ts:
            f.write(f"{' '.join(outs)}: wf.sh {' '.join(ins)}\n\tsh wf.sh {' '.join(argv)}\n\n")
    with open(os.path.join(d, "Snakefile"), "w") as f:
        f.write('rule all:\n    input: "all.txt"\n\n')
        for n, (outs, ins, argv) in enumerate(ts):
            f.write(f"rule t{n}:\n")
            if ins:
                f.write(f"    input: {', '.join(repr(x) for x in ins)}\n")
            f.write(f"    output: {', '.join(repr(x) for x in outs)}\n")
            f.write(f"    shell: {('sh wf.sh ' + ' '.join(argv))!r}\n\n")
    return {"tasks": len(ts), "outputs": [o for outs, _, _ in ts for o in outs]}


def text_outputs(d: str) -> dict:
    """The .txt outputs (name -> bytes): what every configuration must produce alike."""
    out = {}
    for n in sorted(os.listdir(d)):
        if n.endswith(".txt") and (n.startswith(("seq_", "sorted_", "group_")) or n == "all.txt"):
            with open(os.path.join(d, n), "rb") as f:
                out[n] = f.read()
    return out
