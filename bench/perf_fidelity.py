"""How closely the performance model reproduces published measurements.

Reads a calibration file (the format of `calibration/README.md` beside the design: one entry per
published figure), predicts every figure with `specfleet.perf` through `specfleet.calibration`,
and prints one row per point: its id, engine, metric, the measured and predicted values, their
ratio and the log error. A point agrees when |ln(predicted / measured)| <= 0.223 (within 25%).
A sign error is a speedup predicted on the other side of 1 than measured.

The last line is machine-readable:
``perf_max_abs_log_error=<e> perf_sign_errors=<n> points=<p>``.

Run: ``.venv/bin/python bench/perf_fidelity.py --points ../shared/calibration/points.yaml``.
Exits 1 when a point leaves the band or an entry cannot be read.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from specfleet import calibration


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=Path, required=True, help="a calibration YAML file")
    args = parser.parse_args(argv)
    entries = yaml.safe_load(args.points.read_text())
    if not isinstance(entries, list) or not entries:
        print(f"{args.points}: expected a list of calibration points", file=sys.stderr)
        return 1
    try:
        points = [calibration.parse(entry) for entry in entries]
    except ValueError as refused:
        print(f"{args.points}: {refused}", file=sys.stderr)
        return 1
    print(
        f"{'point':38} {'engine':12} {'metric':34} {'measured':>10} {'predicted':>10} "
        f"{'ratio':>6} {'log err':>8}"
    )
    worst = 0.0
    sign_errors = 0
    for point in points:
        predicted = calibration.predict(point)
        error = calibration.log_error(point)
        worst = max(worst, abs(error))
        sign = calibration.speedup_sign_error(point)
        sign_errors += sign
        flag = " OUT" if abs(error) > calibration.AGREEMENT else ""
        flag += " SIGN" if sign else ""
        print(
            f"{point.id:38} {point.engine:12} {point.metric:34} {point.value:10.4g} "
            f"{predicted:10.4g} {predicted / point.value:6.3f} {error:+8.3f}{flag}"
        )
    print(f"perf_max_abs_log_error={worst:.3f} perf_sign_errors={sign_errors} points={len(points)}")
    return 0 if worst <= calibration.AGREEMENT and not sign_errors else 1


if __name__ == "__main__":
    sys.exit(main())
