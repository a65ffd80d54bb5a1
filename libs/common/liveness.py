"""Liveness probe for orchestrators: is this host's worker of SERVICE answering?

    python -m common.liveness emails        # exit 0 if emails@<hostname> answers ping

Pings only this host's node, so one stuck worker is restarted, not the whole fleet's.
"""

from __future__ import annotations

import argparse
import socket
import sys

from common.routing import SERVICES


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("service", choices=SERVICES)
    parser.add_argument("--hostname", default=socket.gethostname())
    parser.add_argument("--timeout", type=float, default=5.0)
    args = parser.parse_args(argv)

    from common.celery_app import current_app
    from common.service import declared

    node = declared(args.service).node(args.hostname)
    replies = current_app().control.ping(destination=[node], timeout=args.timeout)
    if any(node in reply for reply in replies or []):
        print(f"{node}: ok")
        return 0
    print(f"{node}: no answer to ping within {args.timeout}s", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
