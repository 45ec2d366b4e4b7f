#!/usr/bin/env bash
# The example workflow, start to finish, on the embedded store: no AWS
# account, no Java, nothing but this repository and a Rust toolchain.
#
#   bash examples/two-step/run.sh
#
# Builds taskctl and agent, loads 20 samples into two steps (simulate reads,
# then summarize them, each sample as soon as its reads are there), runs
# local workers for both steps at once, and prints the status. Tasks live
# in .taskfleet/tasks.db, results in results/.
# Running it again does nothing that is already done.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
here=examples/two-step

echo "==> building taskctl and agent (the first build takes a few minutes)"
cargo build --locked --quiet --bins
bin=${CARGO_TARGET_DIR:-$root/target}/debug
taskctl() { "$bin/taskctl" "$@"; }

# Scripts see their sample's columns and only what is passed to them by
# name (--pass-env below) of this environment.
export RESULTS="$root/results"
mkdir -p "$RESULTS"

taskctl init
taskctl load --step simulate --script "$here/simulate.sh" --max-attempts 2 "$here/samples.csv"
# Each sample's summary waits for that sample's reads, not for the whole
# cohort's: summarize/DEMO001 starts as soon as simulate/DEMO001 is done.
taskctl load --step summarize --after simulate --script "$here/summarize.sh" --max-attempts 2 "$here/samples.csv"

for step in simulate summarize; do
  echo "==> starting 2 local workers of 2 slots for step '$step'"
  taskctl launch --local --step "$step" --count 2 --slots 2 --idle-timeout 2s --pass-env RESULTS
done
taskctl status --watch

echo "==> status"
taskctl status
summaries=$(find "$RESULTS/summary" -name '*.tsv' | wc -l)
echo "==> $summaries per-sample summaries in $RESULTS/summary/ (reads in $RESULTS/reads/)"
