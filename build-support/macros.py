# Pants BUILD-file macros (loaded by [GLOBAL].build_file_prelude_globs).


def jobs_release(service):
    """The release string frozen into `service`'s pex as JOBS_RELEASE: `<service>@<version>`.

    ./scripts/release sets JOBS_RELEASES="reports@1.0.1 emails@1.2.0" while it packages; any
    other build gets `<service>@dev`. Pants reads the variable through `env()` (constant name:
    that is how it knows to re-read BUILD files, and rebuild the pex, when the value changes).
    """
    # A call of its own: Pants finds the names read by `env("NAME")` calls in the AST, and does
    # not look inside `env(...).split()`.
    releases = env("JOBS_RELEASES", "")  # noqa: F821 - provided by Pants
    for release in releases.split():
        if release.partition("@")[0] == service:
            return release
    return service + "@dev"


def worker_service(name, **pex_kwargs):
    """A queue worker service: its sources and its deployable pex, declared the same way for all."""
    python_sources(  # noqa: F821 - provided by Pants
        name="src",
        # Celery imports tasks.py by name (the app's `include`), so Pants cannot infer it.
        overrides={"app.py": {"dependencies": ["./tasks.py:src"]}},
    )
    pex_binary(  # noqa: F821 - provided by Pants
        name=name,
        entry_point="worker.py:main",
        execution_mode="venv",
        include_tools=True,  # the Dockerfile unpacks it into a venv with PEX_TOOLS
        dependencies=["libs/common/liveness.py"],  # the container healthcheck runs it
        env={"JOBS_RELEASE": jobs_release(name)},  # Sentry's release, `inspect stats`
        **pex_kwargs,
    )


# Targets that start workers by module name (tests, the stack, the bench) depend on these:
# Pants cannot infer an import from `python -m <service>.worker`.
WORKER_ENTRY_POINTS = (  # a tuple: Pants requires prelude values to be hashable
    "services/emails/worker.py:src",
    "services/payments/worker.py:src",
    "services/reports/worker.py:src",
    "services/sync/worker.py:src",
)
