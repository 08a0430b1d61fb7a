# One image for every choreo process (workers, users service, flower).
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/opt/venv \
    CHOREO_DATA_DIR=/data

RUN pip install --no-cache-dir uv==0.13.9

WORKDIR /app
# Dependencies first (cached layer), then the project itself.
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-dev --no-install-project --python /usr/local/bin/python3.11
COPY . .
RUN uv sync --frozen --no-dev --python /usr/local/bin/python3.11

# The venv lives outside /app so a host .venv copied in by `COPY . .` is never used.
ENV PATH=/opt/venv/bin:$PATH
VOLUME ["/data"]
ENTRYPOINT ["choreo"]
CMD ["--help"]
