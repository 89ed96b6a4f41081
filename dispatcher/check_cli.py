"""Command-line wiring of `dvid2ng validate-dvid` and `dvid2ng verify` (light imports only, so
`dvid2ng --help` stays fast; the work lives in `dispatcher.validate` and `dispatcher.verify`)."""

from __future__ import annotations

import argparse
from pathlib import Path

Z_COMPRESS_VALUES = (0, 1, 3, 7, 15, 31, 63)  # = schemas.spec.Z_COMPRESS_VALUES (kept light)
DEFAULT_WINDOW = 64  # = worker.shard_reader.DEFAULT_WINDOW

VALIDATE_EPILOG = """\
examples:
  dvid2ng validate-dvid /data/export --spec mcns-specs.json
  dvid2ng validate-dvid /data/export --spec specs.json --scales 0 --sample 100 --json-report v.json
  dvid2ng validate-dvid /data/fish2 --spec fish2_seg_native_z_spec.json --z-compress 1

SPEC is the spec given to DVID, or the destination spec of a Z-compressed conversion together
with --z-compress N (scale 0 then maps DVID Z to Z/(N+1), as `dvid2ng run --z-compress N` does).
Checks: each record's chunk lies in the shard its file name stands for (DVID's cubic file names
collide when shards are not cubic), the CSV index agrees with the Arrow records, no chunk appears
twice, blocks decode (all, or N per file with --sample N) and their label tables match the
labels/supervoxels lists; no two files stand for the same shard. Memory stays flat: files are
streamed one record batch at a time.
exit codes: 0 no problem found, 1 problems found (each named with file, chunk and cause),
            2 bad arguments, spec or export folder, 130 interrupted
"""

VERIFY_EPILOG = """\
examples:
  dvid2ng verify /data/export /data/volume
  dvid2ng verify /data/export gs://bucket/volume --values 4 --json-report verify.json
  dvid2ng verify /data/fish2 /data/fish2-native --z-compress 1 --scales 0

Each shard is reported as present, missing (source has data, no output shard), empty-source
(no output, rightly: every source chunk is background), unexpected (output with no source) or
corrupt (shard or minishard index unreadable or truncated). Present shards must hold exactly the
source's chunks minus all-background ones. Scales without export files are checked against their
parent scale (every parent shard with data has its child; --values recomputes chunks with
TensorStore's mode downsampling). Output shards are read by byte ranges: the shard index and the
minishard indices only, plus the sampled chunks with --values. Geometry comes from DEST/info;
the label mode from the local run state when there is one.
exit codes: 0 complete, 1 a gap or a fault was found (each shard named with what is wrong),
            2 bad arguments, SOURCE or DEST/info, 130 interrupted
"""


def z_compress_arg(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value not in Z_COMPRESS_VALUES:
        raise argparse.ArgumentTypeError(
            f"{value}: the stride N+1 must divide 64, so N is one of "
            + ", ".join(map(str, Z_COMPRESS_VALUES))
        )
    return value


Z_COMPRESS_HELP = (
    "Z-compressed conversion: s0 keeps every (N+1)-th Z slice of the Z-doubled source and "
    "maps DVID Z to Z/(N+1); N in 0,1,3,7,15,31,63 (default 0)"
)


def add_validate_parser(sub) -> None:
    from dvid2ng.dispatcher.cli import _positive, _scales

    p = sub.add_parser(
        "validate-dvid",
        help="check a DVID export (file names, CSV vs Arrow, blocks) before converting",
        description="Check a DVID export-shards export before converting it.",
        epilog=VALIDATE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("source", metavar="SOURCE", help="DVID export folder (s0/, ...) or gs:// URL")
    p.add_argument(
        "--spec",
        required=True,
        type=Path,
        metavar="SPEC.json",
        help="the spec given to DVID (or the destination spec with --z-compress)",
    )
    p.add_argument(
        "--scales",
        type=_scales,
        default=None,
        metavar="0,1,2",
        help="scales to check (default: every sN/ present)",
    )
    p.add_argument(
        "--sample",
        type=_positive,
        default=None,
        metavar="N",
        help="decode N random blocks per file (default: every block)",
    )
    p.add_argument(
        "--z-compress", type=z_compress_arg, default=0, metavar="N", help=Z_COMPRESS_HELP
    )
    p.add_argument("--json-report", type=Path, default=None, metavar="FILE", help="write JSON here")
    p.add_argument(
        "--jobs",
        type=_positive,
        default=None,
        metavar="N",
        help="files checked in parallel processes (default: CPU count)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of --sample (default 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_verify_parser(sub) -> None:
    from dvid2ng.dispatcher.cli import _positive, _scales

    p = sub.add_parser(
        "verify",
        help="prove a conversion complete: every source shard has its output, counts, values",
        description="Prove a conversion complete from the files themselves (not from job status).",
        epilog=VERIFY_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("source", metavar="SOURCE", help="the DVID export folder (or its gs:// URL)")
    p.add_argument("dest", metavar="DEST", help="the output volume (path, file:// or gs:// URL)")
    p.add_argument(
        "--scales",
        type=_scales,
        default=None,
        metavar="0,1,2",
        help="scales to check (default: every scale of DEST/info)",
    )
    p.add_argument(
        "--values",
        type=_positive,
        default=None,
        metavar="N",
        help="also decode N random chunks per shard on both sides and compare every voxel",
    )
    p.add_argument(
        "--z-compress",
        type=z_compress_arg,
        default=None,
        metavar="N",
        help=Z_COMPRESS_HELP.replace("(default 0)", "(default: from the run state, else 0)"),
    )
    p.add_argument(
        "--downsample-method",
        choices=["mode", "dvid"],
        default=None,
        help="rule --values recomputes downsampled scales with (default: the one recorded by "
        "`run --downres`, else mode)",
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--supervoxels",
        dest="label_mode",
        action="store_const",
        const="supervoxels",
        help="the conversion kept supervoxel ids (default: from the run state, else bodies)",
    )
    mode.add_argument(
        "--labels",
        dest="label_mode",
        action="store_const",
        const="labels",
        help="the conversion wrote agglomerated body ids",
    )
    p.add_argument("--json-report", type=Path, default=None, metavar="FILE", help="write JSON here")
    p.add_argument("--seed", type=int, default=0, help="seed of --values (default 0)")
    p.add_argument(
        "--window",
        type=_positive,
        default=DEFAULT_WINDOW,
        metavar="N",
        help=f"shards whose indices are read concurrently (default {DEFAULT_WINDOW})",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_validate(args: argparse.Namespace) -> int:
    from dvid2ng.dispatcher.validate import run

    return run(args)


def run_verify(args: argparse.Namespace) -> int:
    from dvid2ng.dispatcher.verify import run

    return run(args)


COMMANDS = {
    "validate-dvid": (add_validate_parser, run_validate),
    "verify": (add_verify_parser, run_verify),
}
