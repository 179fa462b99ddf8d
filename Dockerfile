# One image for every batchrelay service: worker, beat, flower and the emulator.
# Build: docker compose build   (or: docker build -t batchrelay .)
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Install the distribution (not editable) from a throw-away copy of the source tree;
# .dockerignore keeps the venv, tests, .git and any .env with secrets out of the context.
WORKDIR /src
COPY . .
RUN pip install ".[all]" \
    && rm -rf /src

# An unprivileged user; its home is the working directory (beat and Flower may write there).
RUN useradd --create-home --home-dir /home/batchrelay --uid 10001 --user-group \
        --shell /usr/sbin/nologin batchrelay
USER 10001:10001
WORKDIR /home/batchrelay

# Flower, emulator.
EXPOSE 5555 8089

CMD ["celery", "-A", "batchrelay.worker", "worker", "-l", "INFO"]
