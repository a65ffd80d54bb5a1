from common.celery_app import create_app

app = create_app("sync", include=("sync.tasks",))
