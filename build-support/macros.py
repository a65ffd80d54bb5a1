# Pants BUILD-file macros (loaded by [GLOBAL].build_file_prelude_globs).


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
        **pex_kwargs,
    )
