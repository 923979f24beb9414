# streamproc worker image: slim, non-root, read-only-root-filesystem friendly, dependencies
# pinned by constraints.txt, the package installed from its wheel (no source tree in the
# image). Build: docker build -t streamproc:0.1.0 .

# -- build: the wheel, with the schemas, topics, prompts and evaluation set it carries ----
FROM python:3.11.10-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# streamproc/data links to these folders; the wheel build copies the files in.
COPY pyproject.toml README.md ./
COPY schemas ./schemas
COPY topics ./topics
COPY prompts ./prompts
COPY procedures ./procedures
COPY tests/eval/scenarios ./tests/eval/scenarios
COPY tests/eval/heldout ./tests/eval/heldout
COPY tests/eval/claims ./tests/eval/claims
COPY tests/eval/baseline.json ./tests/eval/baseline.json
COPY streamproc ./streamproc
RUN pip wheel --no-deps --wheel-dir /wheels .

# -- run ------------------------------------------------------------------------------
FROM python:3.11.10-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app

# Dependencies first (their layer survives source changes), pinned by constraints.txt.
COPY pyproject.toml constraints.txt ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml','rb'))['project']['dependencies']))" > /tmp/requirements.txt \
 && pip install -c constraints.txt -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt pyproject.toml

# The package itself, from the wheel: nothing is read from a source tree at run time.
COPY --from=build /wheels /tmp/wheels
RUN pip install -c constraints.txt --no-deps /tmp/wheels/streamproc-*.whl \
 && rm -rf /tmp/wheels \
 && useradd --system --uid 10001 --user-group --home-dir /app --shell /usr/sbin/nologin streamproc \
 && mkdir -p /var/lib/streamproc \
 && chown 10001:10001 /var/lib/streamproc

USER 10001:10001
ENV STREAMPROC_DATA_DIR=/var/lib/streamproc \
    STREAMPROC_HTTP_PORT=8000 \
    STREAMPROC_LOG_FORMAT=json
VOLUME ["/var/lib/streamproc"]
EXPOSE 8000
# The worker finishes or hands back in-flight cases on SIGTERM (STREAMPROC_SHUTDOWN_GRACE_S).
STOPSIGNAL SIGTERM
ENTRYPOINT ["streamproc"]
CMD ["worker"]
