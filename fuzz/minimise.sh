#!/bin/sh
# Minimises fuzz/corpus/TARGET to a set of inputs that keeps every coverage edge of the corpus
# (libFuzzer's set-cover merge, counting edges only): `cargo fuzz cmin` alone keeps hit counts
# too, which leaves thousands of files. Usage: fuzz/minimise.sh TARGET [cargo-fuzz features...]
# e.g. fuzz/minimise.sh decode --no-default-features
set -eu
t=$1; shift
cd "$(dirname "$0")"
RUSTC_BOOTSTRAP=1 nice -n 19 cargo fuzz build -O "$@" "$t"
out=$(mktemp -d)
nice -n 19 "target/x86_64-unknown-linux-gnu/release/$t" -set_cover_merge=1 -use_counters=0 \
  "$out" "corpus/$t"
rm -rf "corpus/$t"
mv "$out" "corpus/$t"
chmod 755 "corpus/$t"
echo "corpus/$t: $(ls "corpus/$t" | wc -l) files, $(du -sb "corpus/$t" | cut -f1) bytes"
