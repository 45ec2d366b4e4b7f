#!/usr/bin/env bash
# Step one of the example workflow: simulate paired-end reads for one
# sample and write them as gzipped FASTQ.
#
# Environment (from the sample sheet): SAMPLE, READ_PAIRS, POPULATION.
# Environment (passed through by run.sh: --pass-env RESULTS): RESULTS,
# the results directory.
# Output: $RESULTS/reads/$SAMPLE/${SAMPLE}_R1.fastq.gz and _R2.fastq.gz
set -euo pipefail

: "${RESULTS:?RESULTS must name the results directory}"
out="$RESULTS/reads/$SAMPLE"
mkdir -p "$out"
tmp=$(mktemp -d "$out/.tmp.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

# A seed per sample makes reruns reproducible; the GC content varies by
# sample so that step two has something to measure.
seed=$(printf '%s' "$SAMPLE" | cksum | cut -d' ' -f1)
gc=$(awk -v s="$seed" 'BEGIN { printf "%.3f", 0.35 + (s % 30) / 100 }')

awk -v n="$READ_PAIRS" -v seed="$seed" -v gc="$gc" -v id="$SAMPLE" \
    -v r1="$tmp/R1.fastq" -v r2="$tmp/R2.fastq" '
  function base() {
    if (rand() < gc) { return rand() < 0.5 ? "G" : "C" }
    return rand() < 0.5 ? "A" : "T"
  }
  function read_seq(len,   s, i) { s = ""; for (i = 0; i < len; i++) s = s base(); return s }
  BEGIN {
    srand(seed)
    qual = ""; for (i = 0; i < 100; i++) qual = qual "I"
    for (r = 1; r <= n; r++) {
      printf "@%s.%d/1\n%s\n+\n%s\n", id, r, read_seq(100), qual > r1
      printf "@%s.%d/2\n%s\n+\n%s\n", id, r, read_seq(100), qual > r2
    }
  }'
gzip -n -6 "$tmp/R1.fastq" "$tmp/R2.fastq"
# Move into place last: a retried or interrupted attempt never leaves a
# half-written file where step two would read it.
mv "$tmp/R1.fastq.gz" "$out/${SAMPLE}_R1.fastq.gz"
mv "$tmp/R2.fastq.gz" "$out/${SAMPLE}_R2.fastq.gz"
echo "simulated $READ_PAIRS read pairs for $SAMPLE ($POPULATION), GC target $gc"
