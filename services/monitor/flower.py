"""Entry point of Flower. Refuses to start without a password: no open dashboards."""

import os
import sys

from common.celery_app import create_app
from common.settings import SettingsError, get_settings

app = create_app("monitor")


def main() -> None:
    s = get_settings()
    if s.flower_password is None or not s.flower_password.get_secret_value():
        raise SystemExit(
            str(
                SettingsError(
                    "Invalid configuration (environment variables):\n  FLOWER_PASSWORD: must be set"
                )
            )
        )
    # Through the environment, not argv, so the password never shows in `ps`.
    os.environ["FLOWER_BASIC_AUTH"] = f"{s.flower_user}:{s.flower_password.get_secret_value()}"
    app.start(["flower", f"--port={s.flower_port}", f"--address={s.flower_address}", *sys.argv[1:]])


if __name__ == "__main__":
    main()
