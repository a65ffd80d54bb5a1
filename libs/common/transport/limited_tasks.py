"""Tasks under shared rate limits: the contract's limit at start, `RateLimited` anywhere after.

`common.celery_app.implements` wraps every task with `wrap`:

- A contract declaring `rate_limit=RateLimit(...)` (`contracts.declare`) is checked when
  the task starts, against the one limit every worker of every host shares
  (`common.transport.rate_limits`); a concurrency slot is held until the task returns.
- A task over a limit, whether its contract's or one a client asks for just before its
  call (the CRM and the payment gateway: `sync.crm`, `payments.gateway`), raises
  `RateLimited`, and goes back to the delayed set due when a slot frees
  (`common.transport.broker.deferral`): no thread or prefetch slot is held while it waits,
  the other tasks of its queue go on, and the wait is not counted as a retry.

In a prefork child, which holds no message itself, the task is retried by Celery instead
(that retry counts against its `max_retries`); called outside a worker, `RateLimited`
propagates.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from celery import current_task

from common.transport.broker import deferral
from common.transport.rate_limits import Limit, RateLimited, limiter
from contracts.declare import TaskContract

logger = logging.getLogger(__name__)


def contract_limit(contract: TaskContract) -> Limit | None:
    declared = contract.rate_limit
    if declared is None:
        return None
    return Limit(contract.name, declared.parsed_rate, declared.concurrency)


def wrap(fn: Callable[..., Any], contract: TaskContract, *, bind: bool, lease: float) -> Callable[..., Any]:
    """`fn` as a task body that honours `contract`'s limit and defers on `RateLimited`.

    `lease`: seconds a concurrency slot is held at most (the task's hard time limit).
    """
    limit = contract_limit(contract)
    per = contract.rate_limit.per if contract.rate_limit is not None else None
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        task = args[0] if bind else current_task
        try:
            if limit is None:
                return fn(*args, **kwargs)
            key = signature.bind_partial(*args, **kwargs).arguments.get(per) if per else None
            with limiter().slot(limit, key, lease=lease):
                return fn(*args, **kwargs)
        except RateLimited as exc:
            return _wait(task, exc)

    run.__signature__ = signature  # type: ignore[attr-defined]  # Celery's argument check reads it
    return run


def _wait(task: Any, exc: RateLimited) -> Any:
    """Back to the delayed set until `exc.until_ms` (raises `Ignore`), else Celery's retry."""
    deferral.defer(task, exc.until_ms, str(exc))
    request = getattr(task, "request", None)
    if request is None or request.called_directly or request.is_eager:
        raise exc
    eta = datetime.fromtimestamp(exc.until_ms / 1000, tz=UTC)
    raise task.retry(eta=eta, exc=exc, max_retries=(request.retries or 0) + 1)
