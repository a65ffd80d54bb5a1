"""Entry point of beat: schedules live in the database and are edited in the admin.

Safe to start twice: only the holder of the leader lock schedules (see leader.py).
"""

import sys

from common.celery_app import create_app
from common.settings import get_settings

app = create_app("scheduler")


def main() -> None:
    app.start(
        [
            "beat",
            "--scheduler=scheduler.leader:LeaderDatabaseScheduler",
            f"--loglevel={get_settings().log_level}",
            *sys.argv[1:],
        ]
    )


if __name__ == "__main__":
    main()
