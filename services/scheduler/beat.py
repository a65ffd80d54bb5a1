"""Entry point of beat: schedules live in the database and are edited in the admin.

Safe to start twice: only the holder of the leader lock schedules (see leader.py).
"""

import sys

from common.celery_app import create_app
from common.settings import get_settings

app = create_app("scheduler")


def main() -> None:
    s = get_settings()
    app.start(
        [
            # JSON logs: no banner on stdout either, so every line a log system reads is JSON.
            *(["--quiet"] if s.log_format == "json" else []),
            "beat",
            "--scheduler=scheduler.leader:LeaderDatabaseScheduler",
            f"--loglevel={s.log_level}",
            *sys.argv[1:],
        ]
    )


if __name__ == "__main__":
    main()
