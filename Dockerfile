# One image per deployable, from the pex that `./pants package ::` built:
#   docker build --build-arg PEX=services.emails/emails.pex -t jobs-emails .
# docker-compose.yml builds all of them this way.
FROM python:3.11-slim
ARG PEX
RUN useradd --create-home --uid 1000 app
COPY dist/${PEX} /app/service.pex
USER app
WORKDIR /app
ENV PEX_ROOT=/app/.pex PYTHONUNBUFFERED=1
# Unpack the venv at build time, not on every container start.
RUN PEX_TOOLS=1 python /app/service.pex venv --compile /app/venv
ENTRYPOINT ["/app/venv/pex"]
