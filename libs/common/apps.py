from django.apps import AppConfig


class CommonConfig(AppConfig):
    name = "common"
    label = "common"
    verbose_name = "Clinic"
    default_auto_field = "django.db.models.BigAutoField"
