# streamproc worker image: slim, non-root, dependencies pinned by constraints.txt.
FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml constraints.txt README.md ./
COPY streamproc ./streamproc
COPY schemas ./schemas
COPY topics ./topics
RUN pip install -c constraints.txt -e . \
 && useradd --system --uid 10001 --home /app streamproc \
 && mkdir -p /var/lib/streamproc && chown streamproc /var/lib/streamproc
USER 10001
ENV STREAMPROC_DATA_DIR=/var/lib/streamproc STREAMPROC_HTTP_PORT=8000
EXPOSE 8000
ENTRYPOINT ["streamproc"]
CMD ["worker"]
