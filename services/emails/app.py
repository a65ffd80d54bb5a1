from common.celery_app import create_app

app = create_app("emails", include=("emails.tasks",))
