# syntax=docker/dockerfile:1
# qpq-server container: a builder stage that builds wheels for every package
# under packages/ (the Rust extension with maturin), and a slim runtime stage
# that installs them and runs the server as a dedicated user in production
# mode. Secrets come from the environment or from files (*_FILE), never from
# the image.

ARG RUST_IMAGE=rust:1-slim-bookworm
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------
FROM ${RUST_IMAGE} AS builder

RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev build-essential \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/build \
 && /opt/build/bin/pip install --no-cache-dir 'maturin>=1.7,<2' 'pip>=24'
ENV PATH=/opt/build/bin:$PATH \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    CARGO_TERM_COLOR=never
WORKDIR /src

# Dependency-cache layer: package manifests only, so third-party wheels and
# Rust crates are fetched again only when a manifest changes. One line per
# package; tests/test_dockerfile.py fails when this list and packages/*/
# differ, so a new package cannot be left out.
COPY tools/third_party_requirements.py tools/
COPY packages/qpq-proto/pyproject.toml packages/qpq-proto/
COPY packages/qpq-core/pyproject.toml packages/qpq-core/Cargo.toml packages/qpq-core/Cargo.lock packages/qpq-core/
COPY packages/qpq-server/pyproject.toml packages/qpq-server/
COPY packages/qpq-client/pyproject.toml packages/qpq-client/
COPY packages/qpq-p2p/pyproject.toml packages/qpq-p2p/
RUN python3 tools/third_party_requirements.py packages > /tmp/requirements.txt \
 && pip wheel --no-cache-dir --wheel-dir /wheels -r /tmp/requirements.txt
RUN mkdir -p packages/qpq-core/rust && touch packages/qpq-core/rust/lib.rs \
 && cargo fetch --locked --manifest-path packages/qpq-core/Cargo.toml \
 && rm -rf packages/qpq-core/rust

# Build every package, by construction: whatever packages/ holds.
COPY packages/ packages/
RUN set -eu; for pkg in packages/*/; do \
      if [ -f "${pkg}Cargo.toml" ]; then \
        maturin build --release --locked --manifest-path "${pkg}Cargo.toml" --out /wheels; \
      else \
        pip wheel --no-deps --no-cache-dir --wheel-dir /wheels "$pkg"; \
      fi; \
    done

# ---------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

ARG QPQ_UID=10001
ARG QPQ_GID=10001
RUN groupadd --system --gid "${QPQ_GID}" qpq \
 && useradd --system --uid "${QPQ_UID}" --gid qpq --home-dir /var/lib/qpq --no-create-home \
      --shell /usr/sbin/nologin qpq \
 && install -d -o qpq -g qpq -m 0700 /var/lib/qpq

COPY --from=builder /wheels /tmp/wheels
RUN pip install --no-cache-dir --no-index --find-links /tmp/wheels qpq-server \
 && rm -rf /tmp/wheels

ENV QPQ_PRODUCTION=1 \
    QPQ_DATA_DIR=/var/lib/qpq \
    QPQ_LISTEN=0.0.0.0:7000 \
    QPQ_LOG_FORMAT=json \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

USER ${QPQ_UID}:${QPQ_GID}
WORKDIR /var/lib/qpq
VOLUME ["/var/lib/qpq"]
EXPOSE 7000/udp

HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
  CMD ["qpq-server", "health", "--local"]

ENTRYPOINT ["qpq-server"]
CMD ["run"]
