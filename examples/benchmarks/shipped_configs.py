"""Every shipped configuration, end to end: wall time and what its summary reports.

Runs ``sbiflow run CONFIG`` (a subprocess each, as a user would) for every
``examples/configs/*.toml`` into a fresh output folder, and tabulates the wall time, the
time split (simulate / train / sample), C2ST against the reference posterior, the post-fit
calibration check, the coverage at 50 / 68 / 95% and whether ``report.html`` was written.

    python examples/benchmarks/shipped_configs.py --out docs/results/shipped_configs.json

Issue 13: "every shipped config runs end to end (measured, wall time on 2 cores)".
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine, report  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def run_config(path: Path, out_root: Path) -> dict:
    """Run one configuration into ``out_root/<name>``; its summary and the wall time."""
    out = out_root / path.stem
    start = time.perf_counter()
    # as a user runs it, with the output folder moved out of the working tree
    done = subprocess.run(
        [shutil.which("sbiflow") or "sbiflow", "run", str(path), "--output", str(out)],
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - start
    row = {"config": path.name, "wall_seconds": seconds, "returncode": done.returncode}
    if done.returncode != 0:
        row["error"] = done.stderr[-2000:]
        return row
    summary = json.loads((out / "summary.json").read_text())
    row.update(
        seconds=summary.get("seconds", {}),
        num_simulations=summary.get("num_simulations"),
        estimator=summary.get("estimator"),
        c2st=summary.get("c2st_vs_reference"),
        calibration_check=(summary.get("calibration_check") or {}).get("coverage"),
        coverage=summary.get("coverage"),
        evidence=summary.get("evidence"),
        probabilities=summary.get("probabilities"),
        report=(out / "report.html").exists(),
    )
    return row


def _levels(values) -> str:
    if not values:
        return "–"
    if isinstance(values, dict):
        values = list(values.values())
    return " / ".join(f"{v:.2f}" for v in values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=None, help="names, default: all")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    paths = sorted(CONFIGS.glob("*.toml"))
    if args.configs:
        paths = [p for p in paths if p.stem in args.configs or p.name in args.configs]
    print(f"# shipped_configs on {machine()}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="sbiflow-configs-") as tmp:
        for path in paths:
            rows.append(run_config(path, Path(tmp)))
            print(json.dumps(rows[-1]), flush=True)
    header = [
        "config",
        "wall",
        "simulate / train / sample s",
        "C2ST",
        "check",
        "coverage",
        "report",
    ]
    table = []
    for r in rows:
        if r["returncode"] != 0:
            table.append([r["config"], f"{r['wall_seconds']:.0f} s", "FAILED", "", "", "", ""])
            continue
        split = " / ".join(f"{v:.0f}" for v in r["seconds"].values())
        c2st = f"{r['c2st']:.3f}" if r.get("c2st") is not None else "–"
        table.append(
            [
                r["config"],
                f"{r['wall_seconds']:.0f} s",
                split,
                c2st,
                _levels(r.get("calibration_check")),
                _levels(r.get("coverage")),
                "yes" if r.get("report") else "no",
            ]
        )
    report(header, table, args.out, args, rows)


if __name__ == "__main__":
    main()
