#!/bin/bash
# SPDX-License-Identifier: MIT
# The bash completion (completion/lockdctl.bash), run the way bash runs it:
# source it, set COMP_WORDS and COMP_CWORD, call _lockdctl, read COMPREPLY.
#   help_drift     every command and long option `lockdctl --help` lists is
#                  offered, each command's own options after that command
#   completes      commands, options, option values, directories and disks
# Needs the lockdctl binary ($LOCKD_TEST_LOCKDCTL, else ./lockdctl).
set -u
top=$(cd "$(dirname "$0")/.." && pwd)
lockdctl=${LOCKD_TEST_LOCKDCTL:-$top/lockdctl}
scratch=$(mktemp -d "${TMPDIR:-/tmp}/lockd-completion.XXXXXX") || exit 1
trap 'rm -rf "$scratch"' EXIT
# shellcheck source=completion/lockdctl.bash disable=SC1091
. "$top/completion/lockdctl.bash" || exit 1

# Complete the command line given as words; the last word is the one the
# cursor is in.  Prints COMPREPLY, one per line.
comp()
{
    COMP_WORDS=("$@")
    COMP_CWORD=$(($# - 1))
    COMP_LINE="$*"
    COMP_POINT=${#COMP_LINE}
    COMPREPLY=()
    _lockdctl lockdctl "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD - 1]}"
    printf '%s\n' "${COMPREPLY[@]}"
}

# shellcheck source=test/util.sh disable=SC1091
. "$top/test/util.sh"
# has WORD LIST: WORD is one of LIST's lines.
has() { printf '%s\n' "$2" | grep -qxF -- "$1"; }

# --- help_drift ---------------------------------------------------------------
help=$("$lockdctl" --help) || { echo "not ok - help_drift (lockdctl --help failed)"; exit 1; }
commands=$(printf '%s\n' "$help" | sed -n '/^Commands:/,/^$/p' | awk 'NR > 1 && NF { print $1 }')
[ -n "$commands" ] || problem "no commands found in lockdctl --help"
offered=$(comp lockdctl '')
all=$(comp lockdctl --)
for c in $commands; do
    has "$c" "$offered" || problem "command $c is not completed"
    all="$all
$(comp lockdctl "$c" --)"
done
for o in $(printf '%s\n' "$help" | grep -o -- '--[a-z][a-z-]*' | sort -u); do
    has "$o" "$all" || problem "option $o is offered nowhere"
done
# The usage lines: " lockdctl [options] CMD [--opt]..." and their
# continuation lines name each command's own options.
printf '%s\n' "$help" | awk '
    /^Usage:/ { u = 1; next }
    u && /^$/ { exit }
    u && /^ lockdctl \[options\] / { cmd = $3 }
    u { n = split($0, w, /[^a-z-]+/); for (i = 1; i <= n; i++) if (w[i] ~ /^--[a-z]/) print cmd, w[i] }
' >"$scratch/usage"
[ -s "$scratch/usage" ] || problem "no usage lines found in lockdctl --help"
while read -r c o; do
    has "$o" "$(comp lockdctl "$c" --)" || problem "$o is not completed after $c"
done <"$scratch/usage"
result help_drift

# --- completes ----------------------------------------------------------------
# expect WANT NOTWANT WORDS...: the completion of WORDS offers each word of
# WANT and none of NOTWANT (space-separated).
expect()
{
    local want=$1 notwant=$2 got w
    shift 2
    got=$(comp "$@")
    for w in $want; do
        has "$w" "$got" || problem "'$*': $w not offered (got: $(printf '%s ' "$got"))"
    done
    for w in $notwant; do
        has "$w" "$got" && problem "'$*': $w offered"
    done
}
mkdir "$scratch/images" "$scratch/images/sub"
: >"$scratch/images/web1.qcow2"
: >"$scratch/images/web2.qcow2"
: >"$scratch/images/web 3.qcow2"

expect 'run release' 'who gc' lockdctl r
expect 'list stop-helper status' '' lockdctl ''
expect 'who' '' lockdctl --dir "$scratch" w
expect 'who' '' lockdctl -k verbatim w
expect '--direct --test --dir' '--shared --pid' lockdctl -d "$scratch" who --
expect '--min-age' '--shared --direct' lockdctl gc --
expect '--held --free' '--shared' lockdctl list --
expect '--create-ok --pid --on-loss' '--force' lockdctl acquire --
expect '--force' '--direct' lockdctl stop-helper --
expect 'verbatim canonical lvm scsi' '' lockdctl --key-mode ''
expect 'lvm' 'scsi' lockdctl run -k l
# --on-loss=VALUE, split at "=" as bash splits it, and unsplit.
expect 'kill stop report exec: exec-or-kill:' '' lockdctl run --on-loss = ''
expect 'stop' 'kill' lockdctl run --on-loss = s
expect 'exec: exec-or-kill:' 'kill' lockdctl acquire --on-loss e
expect '--on-loss=kill' '' lockdctl run --on-loss=k
expect 'scsi' '' lockdctl --key-mode = s
# Directories for --dir, files for disks.
expect "$scratch/images/sub" "$scratch/images/web1.qcow2" lockdctl --dir "$scratch/images/"
expect "$scratch/images/sub" "$scratch/images/web1.qcow2" lockdctl --dir = "$scratch/images/"
expect "$scratch/images/web1.qcow2 $scratch/images/web2.qcow2" '' \
    lockdctl who "$scratch/images/we"
# A name with a space is one reply.
[ "$(comp lockdctl who "$scratch/images/web ")" = "$scratch/images/web 3.qcow2" ] ||
    problem "'lockdctl who .../web ': not the one file: $(comp lockdctl who "$scratch/images/web ")"
expect "$scratch/images/web1.qcow2" "$scratch/images/web2.qcow2" \
    lockdctl run --wait = 5 --name web1 "$scratch/images/web1"
# An option's value is not taken for the command.
expect '--resource' '--held' lockdctl --socket "$scratch/images/sub" key --
# After "--": the command to run, then its arguments as files.
expect 'bash' '' lockdctl run "$scratch/images/web1.qcow2" -- bas
expect "$scratch/images/web2.qcow2" '' \
    lockdctl run "$scratch/images/web1.qcow2" -- cat "$scratch/images/web2"
# A value with nothing to offer offers nothing (not the commands).
[ -z "$(comp lockdctl acquire --name '')" ] || problem "'lockdctl acquire --name': offers something"
result completes
