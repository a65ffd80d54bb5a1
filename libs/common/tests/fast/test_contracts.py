"""Task contracts (contracts.declare) and the routing rule: what a producer and a worker agree on."""

from __future__ import annotations

import pytest

from common.routing import SERVICES, queue_for, route
from contracts import emails, payments, reports, sync
from contracts.declare import (
    InvalidTaskArgumentsError,
    ServiceContracts,
    UnknownTaskError,
    all_contracts,
    available_services,
    lookup,
)

EVERY = all_contracts()


def test_every_service_carries_its_contracts():
    assert available_services() == sorted(SERVICES)


@pytest.mark.parametrize("contract", EVERY, ids=lambda c: c.name)
def test_a_task_is_named_after_its_service_and_routed_to_its_queue(contract):
    service, _, function = contract.name.partition(".")
    assert contract.queue == service == contract.service
    assert function.isidentifier()
    assert queue_for(contract.name) == service
    assert route(contract.name, (), {}, {}) == {"queue": service}


@pytest.mark.parametrize("contract", EVERY, ids=lambda c: c.name)
def test_a_name_finds_its_own_contract(contract):
    assert lookup(contract.name) is contract


@pytest.mark.parametrize("name", ["celery.chord_unlock", "unknown.task", "emails", "emails.", ".x", ""])
def test_names_of_no_service_are_not_routed(name):
    assert queue_for(name) is None
    assert route(name, (), {}, {}) is None


def test_an_unknown_task_of_a_known_service_names_the_known_ones():
    with pytest.raises(UnknownTaskError, match="service 'emails' declares no such task") as info:
        lookup("emails.send_goodbye_email")
    assert "emails.send_welcome_email" in str(info.value)


def test_a_misspelt_service_suggests_the_task_of_the_same_name():
    with pytest.raises(UnknownTaskError, match="Did you mean 'emails.send_welcome_email'"):
        lookup("mails.send_welcome_email")


def test_an_unknown_service_is_said_to_be_unknown():
    with pytest.raises(UnknownTaskError, match="no contracts for a service 'billing'"):
        lookup("billing.charge")


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [((1,), {}), ((), {"doctor_id": 1})],
)
def test_arguments_that_fit_pass(args, kwargs):
    emails.send_welcome_email.check(args, kwargs)


@pytest.mark.parametrize(
    ("args", "kwargs", "says"),
    [
        (("1",), {}, "doctor_id"),  # strict: no coercion of "1" to 1
        ((1.0,), {}, "doctor_id"),
        ((True,), {}, "doctor_id"),
        ((None,), {}, "doctor_id"),
        ((), {}, "missing"),
        ((1, 2), {}, "too many"),
        ((1,), {"doctor": 1}, "unexpected keyword"),
    ],
)
def test_arguments_that_do_not_fit_are_refused_naming_the_problem(args, kwargs, says):
    with pytest.raises(InvalidTaskArgumentsError, match=says):
        emails.send_welcome_email.check(args, kwargs)


def test_a_producer_may_send_only_the_keys_a_shape_declares():
    with pytest.raises(InvalidTaskArgumentsError, match="email"):
        sync.create_account.check(({"doctor_id": 1, "valid": True, "problems": [], "email": "x@y.z"},))


def test_a_worker_ignores_keys_a_newer_producer_added():
    sync.create_account.check(
        ({"doctor_id": 1, "valid": True, "problems": [], "added_later": 1},), tolerant=True
    )


def test_a_worker_still_refuses_a_declared_key_of_the_wrong_type():
    with pytest.raises(InvalidTaskArgumentsError, match="doctor_id"):
        sync.create_account.check(({"doctor_id": "1", "valid": True, "problems": []},), tolerant=True)


def test_a_shape_with_optional_keys_accepts_them_absent():
    emails.send_onboarding_email.check(({"doctor_id": 1},))


@pytest.mark.parametrize("data", [1, {"event": "x", "doctor_id": 2}, [1, {"report_id": 3}], []])
def test_a_union_parameter_accepts_each_declared_form(data):
    emails.notify_admin.check((data,))


def test_a_union_parameter_names_the_nested_problem():
    with pytest.raises(InvalidTaskArgumentsError, match="doctor_id"):
        emails.notify_admin.check(({"doctor_id": "seven"},))


def test_a_chain_step_may_leave_its_first_parameter_to_the_previous_result():
    sync.create_account.check((), {}, partial=True)


def test_contracts_keep_the_declared_signature_and_doc():
    assert payments.process_payment.parameters == ("appointment_id",)
    assert reports.generate_large_report.parameters == ("report_id",)
    assert "exactly once" in payments.process_payment.doc


def test_a_service_declares_lower_case_identifier_names():
    for bad in ("Emails", "e-mails", "1x", ""):
        with pytest.raises(ValueError):
            ServiceContracts(bad)


def test_a_task_cannot_be_declared_twice():
    service = ServiceContracts("demo")

    def ping() -> None: ...

    service.task(ping)
    with pytest.raises(ValueError, match="declared twice"):
        service.task(ping)
    assert "demo.ping" in service
    assert service.get("demo.ping").queue == "demo"
