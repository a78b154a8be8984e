#!/usr/bin/env python3
"""Run a benchmark command and append its output to bench/RESULTS.md with date, commit and machine.

Every figure in RESULTS.md must say when, on which commit and on what machine it was taken, and by
which command, so the next person can rerun it. This wrapper makes that the default:

    python bench/record.py "compare plain" -- ../shared/bench/compare.py --only plain
    python bench/record.py "wrk profiles" -- python bench/wrk_profiles.py --seconds 8

The command's stdout is printed live and recorded verbatim in a fenced block.
"""
from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "RESULTS.md")


def machine() -> str:
    model = "unknown cpu"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{platform.machine()}, {os.cpu_count()} cores, {model}; load before run {load}"


def commit() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=HERE,
                               capture_output=True, text=True).stdout.strip()
        return rev + (" (+uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> int:
    if "--" not in sys.argv[1:] or sys.argv[1] == "--":
        print(__doc__, file=sys.stderr)
        return 2
    title = sys.argv[1]
    cmd = sys.argv[sys.argv.index("--") + 1:]
    header = (f"\n### {title}\n\n- date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC\n"
              f"- commit: {commit()}\n- machine: {machine()}\n- command: `{' '.join(cmd)}`\n")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        print(line, end="", flush=True)
        lines.append(line)
    rc = proc.wait()
    with open(RESULTS, "a") as f:
        f.write(header + f"- exit code: {rc}\n\n```\n" + "".join(lines).rstrip() + "\n```\n")
    return rc


if __name__ == "__main__":
    sys.exit(main())
