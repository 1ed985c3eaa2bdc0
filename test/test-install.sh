#!/bin/sh
# SPDX-License-Identifier: MIT
# make install and uninstall into scratch directories (DESTDIR), from a copy
# of this tree with what it has built:
#   pc_follows_prefix   lockd.pc made by a plain `make` is made again by
#                       `make install PREFIX=/usr` (and another PREFIX,
#                       LIBDIR, INCLUDEDIR) and says so; pkg-config reads it
#                       and a program built with its flags runs
#   completion_installed  the bash completion lands where bash-completion
#                       looks (its pkg-config completionsdir), or under
#                       PREFIX without that; make uninstall removes it
# Needs `make all` first (make check does it), pkg-config and bash-completion
# (make deps).
set -u
top=$(cd "$(dirname "$0")/.." && pwd)
s=$(mktemp -d "${TMPDIR:-/tmp}/lockd-install.XXXXXX") || exit 1
trap 'rm -rf "$s"' EXIT
unset MAKEFLAGS MAKELEVEL MFLAGS DESTDIR PREFIX LIBDIR INCLUDEDIR BASHCOMPDIR
mkdir "$s/src" "$s/empty"
# tar keeps the times: what the tree has built is not built again.
tar -C "$top" --exclude=./.git --exclude='./fuzz/corpus-*' -cf - . | tar -C "$s/src" -xf - ||
    exit 1
# shellcheck source=test/util.sh disable=SC1091
. "$top/test/util.sh"
mk()
{
    make -C "$s/src" -s "$@" >"$s/make.log" 2>&1 ||
        { sed 's/^/#   /' "$s/make.log"; problem "make $* failed"; }
}
# pc_var FILE VAR: the value of VAR= in the .pc FILE.
pc_var() { sed -n "s/^$2=//p" "$1"; }
# expect_pc FILE PREFIX LIBDIR INCLUDEDIR
expect_pc()
{
    [ -f "$1" ] || { problem "$1 not installed"; return; }
    [ "$(pc_var "$1" prefix)" = "$2" ] || problem "$1: prefix=$(pc_var "$1" prefix), not $2"
    [ "$(pc_var "$1" libdir)" = "$3" ] || problem "$1: libdir=$(pc_var "$1" libdir), not $3"
    [ "$(pc_var "$1" includedir)" = "$4" ] ||
        problem "$1: includedir=$(pc_var "$1" includedir), not $4"
}

# --- pc_follows_prefix --------------------------------------------------------
mk all
expect_pc "$s/src/lockd.pc" /usr/local /usr/local/lib /usr/local/include
mk install PREFIX=/usr DESTDIR="$s/d1"
expect_pc "$s/d1/usr/lib/pkgconfig/lockd.pc" /usr /usr/lib /usr/include
{ [ -f "$s/d1/usr/include/lockd.h" ] && [ -x "$s/d1/usr/bin/lockdctl" ] &&
    [ -x "$s/d1/usr/sbin/lockd-helper" ] && [ -f "$s/d1/usr/lib/liblockd.a" ]; } ||
    problem "make install PREFIX=/usr left out files: $(cd "$s/d1" && find . -type f | head -20)"
mk install PREFIX=/opt/lockd DESTDIR="$s/d2"
pc="$s/d2/opt/lockd/lib/pkgconfig/lockd.pc"
expect_pc "$pc" /opt/lockd /opt/lockd/lib /opt/lockd/include
flags=$(PKG_CONFIG_PATH="$s/d2/opt/lockd/lib/pkgconfig" pkg-config --cflags --libs lockd) ||
    problem "pkg-config --cflags --libs lockd failed on $pc"
for f in -I/opt/lockd/include -L/opt/lockd/lib -llockd; do
    case " $flags " in *" $f "*) ;; *) problem "pkg-config gives '$flags': no $f" ;; esac
done
# The same flags, seen from DESTDIR, build a program that runs.
printf '#include <stdio.h>\n#include <lockd.h>\nint main(void) { puts(lockd_version()); return 0; }\n' \
    >"$s/app.c"
# shellcheck disable=SC2046 # one word per flag
if ${CC:-cc} -o "$s/app" "$s/app.c" $(PKG_CONFIG_SYSROOT_DIR="$s/d2" \
    PKG_CONFIG_PATH="$s/d2/opt/lockd/lib/pkgconfig" pkg-config --cflags --libs lockd) \
    2>"$s/cc.log"; then
    v=$(LD_LIBRARY_PATH="$s/d2/opt/lockd/lib" "$s/app") || problem "the program failed"
    [ "$v" = "$(sed -n 's/^Version: //p' "$pc")" ] ||
        problem "the program says version '$v', lockd.pc $(sed -n 's/^Version: //p' "$pc")"
else
    sed 's/^/#   /' "$s/cc.log"
    problem "a program does not build with pkg-config's flags"
fi
mk install PREFIX=/opt/x LIBDIR=/opt/x/lib64 INCLUDEDIR=/opt/x/inc DESTDIR="$s/d3"
expect_pc "$s/d3/opt/x/lib64/pkgconfig/lockd.pc" /opt/x /opt/x/lib64 /opt/x/inc
# The same values again make nothing again: lockd.pc is left newer than
# everything it is made from, and stays as it is.
mk lockd.pc PREFIX=/opt/x LIBDIR=/opt/x/lib64 INCLUDEDIR=/opt/x/inc
now=$(date +%s)
(cd "$s/src" && touch -d "@$((now - 100))" lockd.pc.in lockd.h lockd.pc.vars &&
    touch -d "@$((now - 50))" lockd.pc) || problem "touch failed"
mk lockd.pc PREFIX=/opt/x LIBDIR=/opt/x/lib64 INCLUDEDIR=/opt/x/inc
[ "$(stat -c %Y "$s/src/lockd.pc")" = "$((now - 50))" ] ||
    problem "lockd.pc made again though PREFIX, LIBDIR and INCLUDEDIR stayed"
mk lockd.pc PREFIX=/opt/y
expect_pc "$s/src/lockd.pc" /opt/y /opt/y/lib /opt/y/include
result pc_follows_prefix

# --- completion_installed -----------------------------------------------------
dir=$(pkg-config --variable=completionsdir bash-completion)
[ -n "$dir" ] || problem "bash-completion's pkg-config data is missing (make deps installs it)"
[ -f "$s/d1$dir/lockdctl" ] || problem "make install PREFIX=/usr: no $dir/lockdctl"
cmp -s "$s/d1$dir/lockdctl" "$top/completion/lockdctl.bash" ||
    problem "$dir/lockdctl is not completion/lockdctl.bash"
[ -f "$s/d2$dir/lockdctl" ] || problem "make install PREFIX=/opt/lockd: no $dir/lockdctl"
# Without bash-completion's pkg-config data: under PREFIX.
PKG_CONFIG_LIBDIR="$s/empty" mk install PREFIX=/opt/lockd DESTDIR="$s/d4"
[ -f "$s/d4/opt/lockd/share/bash-completion/completions/lockdctl" ] ||
    problem "without bash-completion.pc: not under PREFIX/share/bash-completion/completions"
mk uninstall PREFIX=/opt/lockd DESTDIR="$s/d2"
[ ! -e "$s/d2$dir/lockdctl" ] || problem "make uninstall left $dir/lockdctl"
[ ! -e "$pc" ] || problem "make uninstall left $pc"
PKG_CONFIG_LIBDIR="$s/empty" mk uninstall PREFIX=/opt/lockd DESTDIR="$s/d4"
[ ! -e "$s/d4/opt/lockd/share/bash-completion/completions/lockdctl" ] ||
    problem "make uninstall left the completion under PREFIX"
result completion_installed
