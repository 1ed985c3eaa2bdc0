#!/bin/sh
# SPDX-License-Identifier: MIT
# README.md stays true:
#   snippets_compile   every ```c block is a whole file that compiles against
#                      lockd.h with -Wall -Wextra -Werror; one with main() is
#                      linked with liblockd.a
#   manager_runs       that program, run as the README says against a private
#                      helper and a scratch lockspace: the guest runs holding
#                      the lease (in the helper, named), its status is the
#                      manager's, the lease is free after it; a busy disk exits
#                      75 naming its holder
#   names_exist        the plugin named for qemu.conf is the one the Makefile
#                      builds; every *.md file the README names is in the tree
# Needs `make all` first (make check does it).
set -u
top=$(cd "$(dirname "$0")/.." && pwd)
s=$(mktemp -d "${TMPDIR:-/tmp}/lockd-readme.XXXXXX") || exit 1
hpid='' holder=''
cleanup()
{
    [ -n "$holder" ] && kill "$holder" 2>/dev/null
    [ -n "$hpid" ] && kill "$hpid" 2>/dev/null
    wait
    rm -rf "$s"
}
trap cleanup EXIT
# shellcheck source=test/util.sh disable=SC1091
. "$top/test/util.sh"
# until_ok MS CMD...: run CMD every 20 ms until it succeeds, at most MS ms.
until_ok()
{
    n=$(($1 / 20))
    shift
    while ! "$@" >/dev/null 2>&1; do
        n=$((n - 1))
        [ "$n" -gt 0 ] || return 1
        sleep 0.02
    done
}
CC=${CC:-cc}
sodium=$(pkg-config --libs libsodium 2>/dev/null || echo -lsodium)

# --- snippets_compile ---------------------------------------------------------
awk -v dir="$s" '
    /^```c$/ { n++; f = sprintf("%s/snippet-%d.c", dir, n); inb = 1; next }
    inb && /^```$/ { inb = 0; close(f); next }
    inb { print > f }
' "$top/README.md"
manager=
for f in "$s"/snippet-*.c; do
    [ -f "$f" ] || { problem "README.md has no C snippet"; break; }
    # shellcheck disable=SC2086 # $sodium: one word per flag
    if grep -q '^main(\|[ *]main(' "$f"; then
        out=${f%.c}
        $CC -std=gnu11 -Wall -Wextra -Werror -I"$top" -o "$out" "$f" "$top/liblockd.a" \
            $sodium 2>"$s/cc.log" && manager=$out
    else
        $CC -std=gnu11 -Wall -Wextra -Werror -I"$top" -c -o "${f%.c}.o" "$f" 2>"$s/cc.log"
    fi || { sed 's/^/#   /' "$s/cc.log"; problem "README snippet $(basename "$f") does not compile"; }
done
[ -n "$manager" ] || problem "no complete program (with main()) among the README's snippets"
result snippets_compile

# --- manager_runs -------------------------------------------------------------
export LOCKD_DIR="$s/space" LOCKD_SOCKET="$s/helper.sock"
ctl="$top/lockdctl"
disk="$s/web1.img"
: >"$disk" # run refuses a disk that does not exist
if [ -n "$manager" ]; then
    "$top/lockd-helper" --socket "$LOCKD_SOCKET" >"$s/helper.log" 2>&1 &
    hpid=$!
    until_ok 20000 "$ctl" status || problem "lockd-helper did not start: $(cat "$s/helper.log")"
    # The guest sees its disk held exclusively, in the helper, under its name.
    "$manager" "$disk" sh -c "\"$ctl\" who \"$disk\" >\"$s/who\"; \"$ctl\" status >\"$s/status\";
        exit 7" >"$s/manager.out" 2>&1
    rc=$?
    [ "$rc" = 7 ] || problem "the manager exited $rc, not the guest's 7: $(cat "$s/manager.out")"
    grep -q "exclusive .*manager-guest" "$s/who" ||
        problem "the guest did not see its disk held: $(cat "$s/who")"
    grep -q "manager-guest .*exclusive .*$disk" "$s/status" ||
        problem "the helper did not hold the lease: $(cat "$s/status")"
    until_ok 5000 sh -c "\"$ctl\" who \"$disk\" | grep -q ' free '" ||
        problem "the lease is not free after the guest: $("$ctl" who "$disk")"

    # Busy: another holder (lockdctl run, its command waiting on a fifo).
    mkfifo "$s/fifo"
    "$ctl" run --name other-guest "$disk" -- sh -c 'read x' <"$s/fifo" >"$s/run.out" 2>&1 &
    holder=$!
    exec 3>"$s/fifo"
    until_ok 5000 sh -c "\"$ctl\" who \"$disk\" | grep -q ' exclusive '" ||
        problem "lockdctl run did not take the disk: $(cat "$s/run.out")"
    "$manager" "$disk" true >"$s/manager.out" 2>&1
    rc=$?
    [ "$rc" = 75 ] || problem "a busy disk: the manager exited $rc, not 75"
    grep -q "^$disk: busy: held exclusively by other-guest (pid [0-9]*) on host " \
        "$s/manager.out" || problem "the holder is not named: $(cat "$s/manager.out")"
    echo >&3
    exec 3>&-
    wait "$holder" || problem "lockdctl run exited $?: $(cat "$s/run.out")"
    holder=
    # The helper frees the lease when lockdctl run's command exits.
    until_ok 5000 sh -c "\"$ctl\" who \"$disk\" | grep -q ' free '" ||
        problem "the lease is not free after lockdctl run: $("$ctl" who "$disk")"
    kill -TERM "$hpid"
    wait "$hpid" || problem "lockd-helper exited $? on SIGTERM: $(cat "$s/helper.log")"
    hpid=
else
    problem "no program to run"
fi
result manager_runs

# --- names_exist --------------------------------------------------------------
plugin=$(sed -n 's/^LIBVIRT_PLUGIN *= *\(.*\)\.so$/\1/p' "$top/Makefile")
grep -q "^lock_manager = \"$plugin\"" "$top/README.md" ||
    problem "README's lock_manager line does not name $plugin"
grep -o '[A-Za-z0-9_./-]*\.md' "$top/README.md" | sort -u >"$s/md"
while read -r m; do
    [ "$m" = README.md ] || [ -e "$top/$m" ] ||
        problem "README.md names $m, which is not in the repository"
done <"$s/md"
result names_exist
