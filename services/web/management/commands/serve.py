"""`manage.py serve`: the admin under gunicorn, the way it runs in production."""

from typing import Any

from django.core.management.base import BaseCommand
from gunicorn.app.wsgiapp import WSGIApplication


class Command(BaseCommand):
    help = "Serve the web side with gunicorn."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--bind", default="127.0.0.1:8000")
        parser.add_argument("--workers", type=int, default=2)

    def handle(self, *args: Any, bind: str, workers: int, **options: Any) -> None:
        argv = [
            "gunicorn",
            "--bind",
            bind,
            "--workers",
            str(workers),
            "--access-logfile",
            "-",
            "web.wsgi:application",
        ]
        import sys

        sys.argv = argv
        WSGIApplication("%(prog)s [OPTIONS] [APP_MODULE]").run()
