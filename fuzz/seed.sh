#!/bin/sh
# Seeds the fuzzing corpora with every example and test source.
set -eu
cd "$(dirname "$0")"
mkdir -p corpus/parse_lower corpus/mutate_examples
for f in ../examples/*.cnn ../tests/data/ok/*.cnn ../tests/data/err/*.cnn; do
    cp "$f" "corpus/parse_lower/$(basename "$(dirname "$f")")_$(basename "$f")"
done
# mutate_examples reads its seeds itself; give it a few starting edit lists.
i=0
for bytes in '\000' '\001\000\001\000\002\000\003\000' '\002\003\004\000\005\000\006\000' '\005\006\000\000\001\000\002\000'; do
    printf "$bytes" > "corpus/mutate_examples/seed$i"
    i=$((i + 1))
done
