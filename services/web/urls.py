from django.contrib import admin
from django.http import HttpRequest, JsonResponse
from django.urls import include, path
from django.views.generic import RedirectView

from web import deadletters_admin, operations, queue_pause_admin


def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


urlpatterns = [
    path("", RedirectView.as_view(url="/admin/", permanent=False)),
    path("healthz", healthz),
    # Before admin.site.urls, whose catch-all would answer these paths with a 404.
    path("admin/deadletters/", include(deadletters_admin.urlpatterns)),
    path("admin/operations/queues/", include(queue_pause_admin.urlpatterns)),
    path("admin/operations/", include(operations.urlpatterns)),
    path("admin/", admin.site.urls),
]
