#!/usr/bin/env bash
# THE test command (README, CI): system deps + browser driver, then build and test the workspace.
# Browser end-to-end tests (tests/browser/run.mjs, Debian's /usr/bin/chromium) are driven from
# the Rust test suite, so `cargo test` covers them.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh

if ! cargo --version; then
  echo "test.sh: cargo not found: install Rust (https://rustup.rs) and re-run" >&2
  exit 1
fi
node --version

cargo build --workspace --all-targets
cargo test --workspace
