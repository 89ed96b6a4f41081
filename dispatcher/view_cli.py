"""The `dvid2ng view` command's arguments, apart from the server (dispatcher/view.py).

Every `dvid2ng` command builds the whole parser, the fleet worker's included; the server module
pulls in http.server, email and friends (~150 ms), which only `dvid2ng view` needs.
"""

from __future__ import annotations

import argparse

from dvid2ng.dispatcher.ngstate import parse_segments

VIEW_HELP = """\
Serve DEST and a Neuroglancer client from one local HTTP server (no internet needed) and print
the URL that opens DEST as a segmentation layer, centred, with --segments selected.

Serves until Ctrl-C (or SIGTERM), then exits 0. The URL goes to stdout, everything else to
stderr. Each request is logged with --log-level info (e.g. `dvid2ng --log-level info view ...`).
"""

VIEW_EPILOG = """\
examples:
  dvid2ng view /data/volume
  dvid2ng view /data/volume --segments 1234,5678 --scale 1 --open
  dvid2ng view gs://bucket/volume --port 8080

The printed URL holds a random token; only someone with it can read the data. --host 0.0.0.0
makes the volume readable from other machines (anyone with the URL).

exit codes: 0 stopped with Ctrl-C, 2 bad arguments, no valid DEST/info, no Neuroglancer client,
            or the address cannot be used
"""


def _segments(text: str) -> list[int]:
    try:
        return parse_segments(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a port is a whole number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0..65535 (0: any free port), got {value}")
    return value


def _scale_index(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--scale wants a scale index like 0, got {text!r}"
        ) from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"--scale wants a non-negative index, got {value}")
    return value


def add_parser(sub) -> None:
    p = sub.add_parser(
        "view",
        help="serve a volume and Neuroglancer locally; print the URL that shows it",
        description=VIEW_HELP,
        epilog=VIEW_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "dest", metavar="DEST", help="volume folder (or file://, gs:// URL) with an info"
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only)",
    )
    p.add_argument(
        "--port", type=_port, default=0, help="port to listen on (default 0: any free port)"
    )
    p.add_argument(
        "--segments",
        type=_segments,
        default=[],
        metavar="ID,...",
        help="segment ids to select (default: none selected, so all are drawn)",
    )
    p.add_argument(
        "--scale",
        type=_scale_index,
        default=None,
        metavar="N",
        help="zoom to one screen pixel per voxel of scale N, so that scale is drawn "
        "(default: fit the volume's xy extent into the window)",
    )
    p.add_argument("--open", action="store_true", help="also open the URL in a web browser")
