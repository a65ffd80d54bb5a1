"""Every task a service registers is catalogued and routed to that service, and vice versa."""

import importlib

import pytest

from common.catalogue import CATALOGUE, SERVICES
from common.celery_app import current_app


@pytest.mark.parametrize("service", SERVICES)
def test_registered_tasks_match_the_catalogue_and_the_routing_table(service: str) -> None:
    app = importlib.import_module(f"{service}.app").app
    importlib.import_module(f"{service}.tasks")
    registered = {name for name in app.tasks if not name.startswith("celery.")}
    routes = current_app().conf.task_routes
    unrouted = {name for name in registered if routes.get(name) != {"queue": service}}
    assert not unrouted, f"{service} registers tasks the routing table does not send to it: {unrouted}"
    assert registered == set(CATALOGUE.names(service)), "catalogue and implementation disagree"


def test_an_implementation_that_drifts_from_its_declaration_is_refused() -> None:
    from common import catalogue
    from common.celery_app import create_app, implements

    app = create_app("emails")
    with pytest.raises(TypeError, match="does not match the catalogue declaration emails.send_welcome_email"):

        @implements(app, catalogue.send_welcome_email)
        def send_welcome_email(doctor_pk: int) -> dict:
            return {}
