#!/usr/bin/env python
"""Merge the outputs of several work directories (e.g. sweeps) into one results.csv, RESULTS.md and plot.

python scripts/report.py work/mini other/work_dir --out report/
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from asr.errors import UserError  # noqa: E402
from asr.reports.document import write_report  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work_dirs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path("report"), help="where the report goes (default: report/)")
    parser.add_argument("--title", default="Results")
    parser.add_argument(
        "--manifests",
        help="only the results decoded from this prepared corpus, its folder under the work dir "
        "(e.g. manifests/mini-07509ac9): a work dir that holds several sizes of a corpus",
    )
    args = parser.parse_args()
    missing = [str(d) for d in args.work_dirs if not d.is_dir()]
    if missing:
        sys.exit(f"error: not a directory: {', '.join(missing)}")
    try:
        write_report(args.work_dirs, args.out, args.title, manifests=args.manifests)
    except UserError as error:
        sys.exit(f"error: {error}")
    print(f"wrote {args.out}/RESULTS.md, results.csv, wer_vs_bits.png")


if __name__ == "__main__":
    main()
