import os

from django.core.wsgi import get_wsgi_application

from common.observability.sentry import init_sentry

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "web.settings")
init_sentry("web")  # before Django loads, so the Django integration sees every request
application = get_wsgi_application()
