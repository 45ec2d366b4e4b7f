#!/usr/bin/env bash
# Step two of the example workflow: read count, GC content and checksums
# of one sample's reads from step one, as a one-line TSV summary.
#
# Environment (from the sample sheet): SAMPLE, POPULATION.
# Environment (passed through by run.sh: --pass-env RESULTS): RESULTS,
# the results directory.
# Output: $RESULTS/summary/$SAMPLE.tsv
set -euo pipefail

: "${RESULTS:?RESULTS must name the results directory}"
reads="$RESULTS/reads/$SAMPLE"
r1="$reads/${SAMPLE}_R1.fastq.gz"
r2="$reads/${SAMPLE}_R2.fastq.gz"
for f in "$r1" "$r2"; do
  if [ ! -s "$f" ]; then
    echo "missing input $f: has step 'simulate' finished for $SAMPLE?" >&2
    exit 66
  fi
done

# Every 4th line starting at the 2nd is a sequence.
stats=$(gzip -dc "$r1" "$r2" | awk '
  NR % 4 == 2 { reads++; bases += length($0); gc += gsub(/[GC]/, "") }
  END { if (bases == 0) exit 1; printf "%d\t%d\t%.4f", reads, bases, gc / bases }')
sum1=$(sha256sum "$r1" | cut -d' ' -f1)
sum2=$(sha256sum "$r2" | cut -d' ' -f1)

mkdir -p "$RESULTS/summary"
tmp=$(mktemp "$RESULTS/summary/.${SAMPLE}.XXXXXX")
{
  printf 'sample\tpopulation\treads\tbases\tgc_fraction\tr1_sha256\tr2_sha256\n'
  printf '%s\t%s\t%s\t%s\t%s\n' "$SAMPLE" "$POPULATION" "$stats" "$sum1" "$sum2"
} > "$tmp"
mv "$tmp" "$RESULTS/summary/$SAMPLE.tsv"
echo "summarized $SAMPLE: $(cut -f3,5 "$RESULTS/summary/$SAMPLE.tsv" | tail -n 1)"
