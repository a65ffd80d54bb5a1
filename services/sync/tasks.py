"""The sync service's tasks, as declared in `contracts.sync`."""

from __future__ import annotations

import logging
import time
from typing import Any

import requests
from django.db import connection
from django.utils import timezone

from common import calls
from common.celery_app import implements
from common.models import Doctor
from common.transport.locks import redis_client, task_lock
from contracts import sync as contract
from sync import crm
from sync.app import app

logger = logging.getLogger(__name__)


@implements(
    app,
    contract.sync_doctor_to_external_system,
    autoretry_for=(requests.RequestException,),
    retry_backoff=True,
    retry_backoff_max=600,
    retry_jitter=True,
    max_retries=3,
    dead_letter=True,  # retries exhausted: kept for replay once the CRM is back
)
def sync_doctor_to_external_system(doctor_id: int) -> dict:
    try:
        doctor = Doctor.objects.get(pk=doctor_id)
    except Doctor.DoesNotExist:
        return {"status": "skipped", "reason": "doctor not found"}
    external_id = crm.upsert_doctor(doctor_id=doctor.pk, name=doctor.name, email=doctor.email)
    Doctor.objects.filter(pk=doctor.pk).update(external_id=external_id, synced_at=timezone.now())
    return {"status": "synced", "external_id": external_id}


@implements(app, contract.sync_all_doctors, bind=True)
def sync_all_doctors(self: Any) -> dict:
    with task_lock(f"task-lock-{self.name}", timeout=300) as acquired:
        if not acquired:
            return {"status": "skipped", "reason": "already running"}
        doctor_ids = list(Doctor.objects.values_list("pk", flat=True))
        calls.send_many(contract.sync_doctor_to_external_system, [(i,) for i in doctor_ids])
        return {"status": "success", "queued": len(doctor_ids)}


@implements(app, contract.validate_doctor)
def validate_doctor(doctor_id: int) -> dict:
    doctor = Doctor.objects.filter(pk=doctor_id).first()
    problems = []
    if doctor is None:
        problems.append("doctor not found")
    else:
        if not doctor.email:
            problems.append("missing email")
        if not doctor.last_name:
            problems.append("missing last name")
    return {"doctor_id": doctor_id, "valid": not problems, "problems": problems}


@implements(
    app,
    contract.create_account,
    autoretry_for=(requests.RequestException,),
    retry_backoff=True,
    retry_backoff_max=600,
    retry_jitter=True,
    max_retries=3,
)
def create_account(data: dict) -> dict:
    if not data.get("valid", False):
        return {**data, "account_created": False}
    doctor = Doctor.objects.get(pk=data["doctor_id"])
    external_id = crm.upsert_doctor(doctor_id=doctor.pk, name=doctor.name, email=doctor.email)
    Doctor.objects.filter(pk=doctor.pk).update(external_id=external_id, synced_at=timezone.now())
    return {**data, "account_created": True, "external_id": external_id}


@implements(app, contract.echo)
def echo(value: int) -> int:
    return value


@implements(app, contract.probe_unique)
def probe_unique(key: int, value: int, hold_ms: int = 0) -> int:
    time.sleep(min(max(hold_ms, 0), 30_000) / 1000)  # bounded: a probe never ties a thread up for long
    return value


@implements(app, contract.health_check)
def health_check() -> dict:
    redis_client().ping()
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return {"status": "ok", "broker": "ok", "database": "ok"}
