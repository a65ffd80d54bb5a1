"""Every task a service registers is declared in its contract and routed to it, and vice versa."""

import importlib

import pytest

from common.routing import SERVICES, route
from contracts.declare import service_contracts


@pytest.mark.parametrize("service", SERVICES)
def test_registered_tasks_match_the_contract_and_the_routing_rule(service: str) -> None:
    app = importlib.import_module(f"{service}.app").app
    importlib.import_module(f"{service}.tasks")
    registered = {name for name in app.tasks if not name.startswith("celery.")}
    unrouted = {name for name in registered if route(name, (), {}, {}) != {"queue": service}}
    assert not unrouted, f"{service} registers tasks the routing rule does not send to it: {unrouted}"
    declared = service_contracts(service)
    assert declared is not None, f"no contracts.{service} module"
    assert registered == {c.name for c in declared}, "contract and implementation disagree"


def test_an_implementation_that_drifts_from_its_declaration_is_refused() -> None:
    from common.celery_app import create_app, implements
    from contracts import emails

    app = create_app("emails")
    with pytest.raises(TypeError, match="does not match the contract declaration emails.send_welcome_email"):

        @implements(app, emails.send_welcome_email)
        def send_welcome_email(doctor_pk: int) -> dict:
            return {}


def test_names_of_no_service_are_left_to_celery() -> None:
    assert route("celery.chord_unlock", (), {}, {}) is None
    assert route("billing.charge", (), {}, {}) is None  # no such service: not guessed
    assert route("payments", (), {}, {}) is None


@pytest.mark.parametrize("service", SERVICES)
def test_each_service_declares_itself_once(service: str) -> None:
    from common.service import declared

    declaration = declared(service)
    assert (declaration.name, declaration.queue) == (service, service)
    assert declaration.why, "say why this pool and concurrency"


def test_a_wrong_declaration_is_refused_with_a_reason() -> None:
    from common.service import WorkerService, declared

    with pytest.raises(ValueError, match="pool 'greenlets' is not one of prefork, threads, solo"):
        WorkerService(name="sync", pool="greenlets", concurrency=4)
    with pytest.raises(ValueError, match="concurrency must be at least 1"):
        WorkerService(name="sync", pool="threads", concurrency=0)
    with pytest.raises(ValueError, match="'billing' is no worker service"):
        WorkerService(name="billing", pool="threads", concurrency=4)
    with pytest.raises(LookupError, match="no worker service 'billing'"):
        declared("billing")
