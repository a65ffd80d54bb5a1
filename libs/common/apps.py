from django.apps import AppConfig


class CommonConfig(AppConfig):
    name = "common"
    label = "common"
    verbose_name = "Clinic"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        """Hand every app's hooks to `common.celery_base` before any app is made there."""
        import common.process_hooks  # noqa: F401 - sets celery_base's hooks when imported
