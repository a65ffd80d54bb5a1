"""Liveness probe for orchestrators: is this host's worker of SERVICE answering, and consuming?

    python -m common.liveness emails        # exit 0 if emails@<hostname> answers ping
                                            # and still consumes its queue `emails`

Asks only this host's node, so one stuck worker is restarted, not the whole fleet's. A worker
that answers ping but no longer consumes its own queue (`celery control cancel_consumer`, or a
consumer lost to a broker hiccup) does nothing while looking alive: it fails the probe too,
and `inspect active_queues` is asked for that.
"""

from __future__ import annotations

import argparse
import socket
import sys

from common.celery_app import current_app
from common.routing import SERVICES
from common.service import declared


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("service", choices=SERVICES)
    parser.add_argument("--hostname", default=socket.gethostname())
    parser.add_argument("--timeout", type=float, default=5.0)
    args = parser.parse_args(argv)
    service = declared(args.service)
    node = service.node(args.hostname)
    app = current_app()
    replies = app.control.ping(destination=[node], timeout=args.timeout)
    if not any(node in reply for reply in replies or []):
        print(f"{node}: no answer to ping within {args.timeout}s", file=sys.stderr)
        return 1
    queues = (app.control.inspect(destination=[node], timeout=args.timeout).active_queues() or {}).get(node)
    if queues is None:
        print(f"{node}: answers ping but not inspect active_queues within {args.timeout}s", file=sys.stderr)
        return 1
    consumed = sorted(q.get("name", "?") for q in queues)
    if service.queue not in consumed:
        print(
            f"{node}: answers ping but does not consume its queue {service.queue!r} "
            f"(consumes: {', '.join(consumed) or 'nothing'}); its tasks wait unserved",
            file=sys.stderr,
        )
        return 1
    print(f"{node}: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
