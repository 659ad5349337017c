#!/usr/bin/env bash
# The field-network report (issue 16; bench/RESULTS.md, "Field network"): `field-client run
# --source test` publishing to a real node through the project's impairment relay (netem
# UdpRelay, seeded; media UDP and QUIC signaling both relayed), a GStreamer viewer on a clean path
# checking every decoded frame against the source (time code + SMPTE bars), office traffic both
# ways. Scenarios: baseline; 10 % loss; 200 ms jitter; 10 % loss + 200 ms jitter; a 300 kbit/s
# cap; a 30 s outage; an address switch mid-stream. Prints a Markdown table on stdout (progress
# and per-scenario details on stderr).
#
# It is the `field_network_report` test of field-client/tests/field_network.rs (ignored in CI;
# the CI runs the shortened scenarios of the same file), built as the tests are (debug, deps
# optimised), so one build serves both.
# Usage: bash bench/field-network.sh [WINDOW_SECONDS]   (default 40; run from anywhere)
set -euo pipefail
cd "$(dirname "$0")/.."
export FIELD_NETWORK_WINDOW=${1:-40}
echo "date: $(date -u '+%Y-%m-%d %H:%M UTC'); commit: $(git rev-parse --short HEAD);" \
  "$(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')); load: $(cut -d' ' -f1-3 /proc/loadavg)"
nice -n 10 cargo test -q -p field-client --test field_network -- --ignored --exact \
  field_network_report --nocapture --test-threads 1
