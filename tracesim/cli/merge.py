"""``tracesim merge FILE... -o OUT``: combine per-process traces into one timeline (see docs/trace-format.md)."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("merge", help="merge traces of several processes into one timeline", description=__doc__)
    p.add_argument("files", nargs="+", help="trace files; the first one's clock becomes the merged clock")
    p.add_argument("-o", "--out", required=True, help="merged trace to write")
    p.set_defaults(run=run)


def run(args) -> int:
    from tracesim.format.merge import merge_files

    merged = merge_files(args.files, args.out)
    print(f"{args.out}: {len(merged.records):,} records from {len(merged.header.processes)} processes")
    return 0
