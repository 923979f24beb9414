# streamproc worker image: slim, non-root, read-only-root-filesystem friendly, dependencies
# pinned by constraints.txt. Build: docker build -t streamproc:0.1.0 .
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
 && rm /tmp/requirements.txt

# The package and the data files it reads at run time (schemas, topics, prompts).
COPY README.md ./
COPY streamproc ./streamproc
COPY schemas ./schemas
COPY topics ./topics
COPY prompts ./prompts
RUN pip install --no-deps -e . \
 && python -m compileall -q streamproc \
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
