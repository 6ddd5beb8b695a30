# syntax=docker/dockerfile:1
# The one image every Keel process runs from; docker-compose.kafka.yml picks the process
# with the `keel ...` subcommand. Needs nothing on the network but PyPI.

# Build stage: the full python image has a C compiler, so the optional compiled matching
# core (engine/_cbook.c) is built into the wheel here; every dependency is collected as
# a wheel so the runtime stage installs offline.
FROM python:3.11-bookworm AS build
WORKDIR /src
COPY . .
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# Runtime stage: slim, no compiler, same Debian release as the build stage so the
# compiled extension links against the same libc.
FROM python:3.11-slim-bookworm
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    KEEL_DATA_DIR=/var/lib/keel
# Bind-mounting the wheels keeps them out of the image layers.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels keel
# A fixed uid so volume ownership is predictable across rebuilds.
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /var/lib/keel keel
USER keel
WORKDIR /var/lib/keel
ENTRYPOINT ["keel"]
CMD ["--help"]
