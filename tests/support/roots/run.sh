#!/usr/bin/env bash
# In a clean root (tests/support/clean_root.py): the inputs' tar on stdin goes to /inputs, the
# script runs with its output on stderr, and /results leaves as a tar on stdout, also when the
# script fails (its logs are in it).
set -uo pipefail
mkdir -p /inputs /results
tar -x -C /inputs || exit 1
status=0
bash -euxo pipefail "$1" >&2 || status=$?
tar --sparse -c -C /results .
exit "$status"
