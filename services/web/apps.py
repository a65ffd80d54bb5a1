from django.apps import AppConfig


class WebConfig(AppConfig):
    name = "web"
    verbose_name = "Web"

    def ready(self) -> None:
        # Creating a Doctor or an Appointment in the web side sends its tasks (web/events.py).
        from web import events

        events.connect()
