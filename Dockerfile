# syntax=docker/dockerfile:1
# One image, three binaries (bidder, sse-edge, ws-edge); choose one with the
# command, e.g. `docker run auction-fanout:local sse-edge`.
#
# Build caching without cargo-chef: the "planner" stage reduces the source tree
# to the manifests, the lockfile and empty stand-ins for every target file. Its
# output only changes when a manifest changes, so the builder's expensive
# "compile all dependencies" layer stays cached across source edits.

# ---------------------------------------------------------------- planner ---
FROM debian:bookworm-slim AS planner
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /src
COPY . .
# For each workspace member (any directory holding a Cargo.toml): keep the
# manifest, a real build.rs if any, and an empty stub for each target file
# that exists (lib.rs, main.rs, src/bin/*.rs), so cargo sees the same targets.
RUN mkdir -p /plan \
 && cp Cargo.toml Cargo.lock /plan/ \
 && if [ -d .cargo ]; then cp -r .cargo /plan/; fi \
 && if [ -f rust-toolchain.toml ]; then cp rust-toolchain.toml /plan/; fi \
 && find . -mindepth 2 -name Cargo.toml -not -path './target/*' -print0 \
  | while IFS= read -r -d '' manifest; do \
      dir="$(dirname "$manifest")"; \
      mkdir -p "/plan/$dir/src"; \
      cp "$manifest" "/plan/$dir/Cargo.toml"; \
      if [ -f "$dir/build.rs" ]; then cp "$dir/build.rs" "/plan/$dir/build.rs"; fi; \
      if [ -f "$dir/src/lib.rs" ]; then : > "/plan/$dir/src/lib.rs"; fi; \
      if [ -f "$dir/src/main.rs" ]; then echo 'fn main() {}' > "/plan/$dir/src/main.rs"; fi; \
      if [ -d "$dir/src/bin" ]; then \
        mkdir -p "/plan/$dir/src/bin"; \
        for bin in "$dir"/src/bin/*.rs; do [ -e "$bin" ] || continue; echo 'fn main() {}' > "/plan/$bin"; done; \
      fi; \
    done

# ---------------------------------------------------------------- builder ---
FROM rust:1-bookworm AS builder
WORKDIR /src
# 1) Dependencies only: compiled against the stubs, cached until a manifest changes.
COPY --from=planner /plan/ ./
RUN cargo build --release --locked --bins
# 2) The real sources. COPY keeps the files' original mtimes, which can be older
#    than the stub build; touch them so cargo rebuilds the workspace crates.
COPY . .
# `--version` names the commit when given one:
# docker build --build-arg GIT_COMMIT=$(git rev-parse --short HEAD) .
ARG GIT_COMMIT=""
RUN find . -path ./target -prune -o -type f -exec touch {} + \
 && cargo build --release --locked --bins \
 && mkdir -p /out \
 && cp target/release/bidder target/release/sse-edge target/release/ws-edge /out/

# ---------------------------------------------------------------- runtime ---
FROM debian:bookworm-slim
# ca-certificates: rediss:// and https OTLP endpoints. Versions float with the
# bookworm point release on purpose (security fixes), hence DL3008.
# A fixed numeric uid lets Kubernetes verify runAsNonRoot.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --no-log-init --uid 10001 --user-group --no-create-home \
      --home-dir /nonexistent --shell /usr/sbin/nologin auction
COPY --from=builder /out/ /usr/local/bin/
USER 10001:10001
# bidder, sse-edge, ws-edge default ports (AUCTION_LISTEN overrides).
EXPOSE 8080 8081 8082
# The binaries handle SIGTERM themselves (drain, then exit 0 within
# AUCTION_SHUTDOWN_GRACE_MS), so they run directly as PID 1 without a shell.
STOPSIGNAL SIGTERM
CMD ["bidder"]
