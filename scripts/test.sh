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

for tool in fmt clippy; do
  if ! cargo "$tool" --version >/dev/null 2>&1; then
    rustup component add "$( [ "$tool" = fmt ] && echo rustfmt || echo clippy )" || {
      echo "test.sh: cargo $tool is missing and rustup could not add it" >&2; exit 1; }
  fi
done
# House habits first: a tree that is not rustfmt-clean or has a clippy warning fails in seconds,
# before the long media tests.
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
# The fuzz targets live in an excluded crate (they need nightly to run); stable type-checks them so
# a change to a decoder's signature cannot silently break the fuzzing campaign.
cargo check --manifest-path fuzz/Cargo.toml --target-dir target --locked

cargo build --workspace --all-targets
cargo test --workspace
