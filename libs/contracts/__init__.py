"""Each service's task contracts, one module per service: name, queue and argument shapes.

Readable without the implementation: a module here imports only `contracts.declare`, which
needs pydantic and nothing of Celery or Django. Producers import the contracts they call
and send through `common.calls`; the owning service implements them with
`common.celery_app.implements`.
"""
