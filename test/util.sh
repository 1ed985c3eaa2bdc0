# SPDX-License-Identifier: MIT
# shellcheck shell=sh
# Sourced by the shell tests (test/test-*.sh): test/util.h's counterpart.
# Each case calls problem for each thing wrong, then result with its name,
# which prints the "ok - NAME" or "not ok - NAME" line test/run counts.

fails=0

# problem TEXT...: one thing wrong in the current case, shown as a comment.
problem()
{
    echo "#   $*"
    fails=$((fails + 1))
}

# result NAME: the current case's line; the next case starts clean.
result()
{
    if [ "$fails" -eq 0 ]; then echo "ok - $1"; else echo "not ok - $1"; fi
    fails=0
}
