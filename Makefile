# SPDX-License-Identifier: MIT
# lockd: a plain GNU Makefile.  `make check` installs what is missing (as
# root), builds everything and runs every test; its last line is
# "N passed, N failed".

PREFIX     ?= /usr/local
BINDIR     ?= $(PREFIX)/bin
SBINDIR    ?= $(PREFIX)/sbin
LIBDIR     ?= $(PREFIX)/lib
INCLUDEDIR ?= $(PREFIX)/include
MANDIR     ?= $(PREFIX)/share/man
PKGCONFIGDIR ?= $(LIBDIR)/pkgconfig
# Where bash-completion loads completions from, else the same place under PREFIX.
BASHCOMPDIR ?= $(shell d=$$(pkg-config --variable=completionsdir bash-completion \
	2>/dev/null) && [ -n "$$d" ] && echo "$$d" || \
	echo '$(PREFIX)/share/bash-completion/completions')
UNITDIR    ?= $(PREFIX)/lib/systemd/system
USERUNITDIR ?= $(PREFIX)/lib/systemd/user
DESTDIR    ?=

CC      ?= cc
CXX     ?= c++
CFLAGS  ?= -O2 -g
WERROR  ?=
WARN     = -Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes \
           -Wpointer-arith -Wformat=2 $(WERROR)
# Recursive (=) so that flags are read after `deps` has installed the packages.
SODIUM_CFLAGS  = $(shell pkg-config --cflags libsodium 2>/dev/null)
SODIUM_LIBS    = $(shell pkg-config --libs libsodium 2>/dev/null || echo -lsodium)
SYSTEMD_CFLAGS = $(shell pkg-config --cflags libsystemd 2>/dev/null)
SYSTEMD_LIBS   = $(shell pkg-config --libs libsystemd 2>/dev/null || echo -lsystemd)
ALL_CFLAGS     = -std=gnu11 $(WARN) $(CFLAGS) $(SODIUM_CFLAGS) -I.
PIC_CFLAGS     = -fPIC -fvisibility=hidden

SONAME   = liblockd.so.1
VERSION  = $(shell sed -n 's/^\#define LOCKD_VERSION_STRING "\(.*\)"/\1/p' lockd.h)

TESTS    = $(patsubst %.c,%,$(wildcard test/test-*.c))
# Tests written in shell: packaging, the bash completion, the README.
SCRIPT_TESTS = $(wildcard test/test-*.sh)
BENCHES  = $(patsubst %.c,%,$(wildcard bench/bench-*.c))

MANPAGES = man/lockdctl.1 man/lockd.3 man/lockd-protocol.7 man/lockd-helper.8
UNITS    = systemd/lockd-helper.socket systemd/lockd-helper.service
USERUNITS = systemd/user/lockd-helper.socket systemd/user/lockd-helper.service

.PHONY: all deps demo check check-build check-man check-asan check-valgrind bench fuzz \
	fuzz-build install uninstall clean clean-tests

# The libvirt plugin: libvirtd loads <lock_manager>.so and reads
# qemu-<lock_manager>.conf, so the file's name is what users write in
# qemu.conf ("lockd" is libvirt's own plugin).  lockd-helper.so, its name
# before, stays a link to it (its settings file stays qemu-lockd-helper.conf).
LIBVIRT_PLUGIN = lockd-libvirt.so
LIBVIRT_PLUGIN_OLD = lockd-helper.so
PROGRAMS = $(patsubst %.c,%,$(wildcard lockd-helper.c lockdctl.c))

all: liblockd.a $(SONAME) lockd.pc $(PROGRAMS) $(LIBVIRT_PLUGIN) $(LIBVIRT_PLUGIN_OLD)

# The helper builds lockd.c into itself: the wire codec is written once, in
# lockd.c, and stays static there (DESIGN.md, "Protocol rules").
# lockd-helper-fs.c: its worker threads for calls that can block on a
# filesystem.  lockd-keeper.c: --keeper, its fd store without systemd.
HELPER_SRC = lockd-helper.c lockd-helper-fs.c lockd-keeper.c
HELPER_DEPS = $(HELPER_SRC) lockd-helper-fs.h lockd-keeper.h lockd.c lockd.h

lockd-helper: $(HELPER_DEPS)
	$(CC) $(ALL_CFLAGS) $(SYSTEMD_CFLAGS) -o $@ $(HELPER_SRC) -lpthread $(SYSTEMD_LIBS) \
		$(SODIUM_LIBS) $(LDFLAGS)

# lockdctl is four files: lockdctl-doctor.c is its `doctor` command,
# lockdctl-watch.c the lease watcher `run` leaves behind without a helper,
# lockdctl-list.c its `list` command.
LOCKDCTL_SRC = lockdctl.c lockdctl-doctor.c lockdctl-watch.c lockdctl-list.c
lockdctl: $(LOCKDCTL_SRC) lockdctl.h liblockd.a lockd.h
	$(CC) $(ALL_CFLAGS) -o $@ $(LOCKDCTL_SRC) liblockd.a -lpthread $(SODIUM_LIBS) \
		$(LDFLAGS)

lockd.o: lockd.c lockd.h
	$(CC) $(ALL_CFLAGS) -c -o $@ lockd.c

lockd.pic.o: lockd.c lockd.h
	$(CC) $(ALL_CFLAGS) $(PIC_CFLAGS) -c -o $@ lockd.c

liblockd.a: lockd.o
	rm -f $@
	$(AR) rcs $@ lockd.o

$(SONAME): lockd.pic.o
	$(CC) $(CFLAGS) -shared -Wl,-soname,$(SONAME) -Wl,--no-undefined -o $@ lockd.pic.o \
		$(SODIUM_LIBS) $(LDFLAGS)
	ln -sf $(SONAME) liblockd.so

# lockd.pc says where lockd is installed: lockd.pc.vars holds the PREFIX,
# LIBDIR and INCLUDEDIR it was made with and is rewritten only when they
# change, so `make install PREFIX=/usr` after a plain `make` makes it again.
PC_VARS = prefix=$(PREFIX) libdir=$(LIBDIR) includedir=$(INCLUDEDIR)
lockd.pc.vars: FORCE
	@echo '$(PC_VARS)' | cmp -s - $@ || echo '$(PC_VARS)' > $@

.PHONY: FORCE
FORCE:

lockd.pc: lockd.pc.in lockd.h lockd.pc.vars
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@LIBDIR@|$(LIBDIR)|' \
	    -e 's|@INCLUDEDIR@|$(INCLUDEDIR)|' -e 's|@VERSION@|$(VERSION)|' $< > $@

# Tests include lockd.c (for the syscall seam and the static functions) or
# link liblockd.a; either way they are rebuilt when the library changes.
test/test-%: test/test-%.c test/test.h test/util.h lockd.c lockd.h
	$(CC) $(ALL_CFLAGS) -o $@ $< lockd.c -lpthread $(SODIUM_LIBS)

# A test file that includes lockd.c itself says so on its first line.
test/test-fault: test/test-fault.c test/test.h test/util.h lockd.c lockd.h
	$(CC) $(ALL_CFLAGS) -o $@ $< -lpthread $(SODIUM_LIBS)

# The header must compile as C99 and as C++.
test/header-c99.o: lockd.h
	printf '#include "lockd.h"\nint lockd_c99_ok;\n' | \
		$(CC) -std=c99 -pedantic -Wall -Wextra -Werror -I. -x c -c -o $@ -
test/header-cxx.o: lockd.h
	printf '#include "lockd.h"\nint lockd_cxx_ok;\n' | \
		$(CXX) -std=c++11 -pedantic -Wall -Wextra -Werror -I. -x c++ -c -o $@ -

deps:
	@sh tools/deps

# The story with real processes: a helper started as systemd would, a
# manager, two guests, one disk.
demo: deps
	@$(MAKE) --no-print-directory all
	@sh tools/demo

# Man pages stay lint-clean.  Run before test/run, so that its total is the
# last line of `make check`.
check-man:
	@mandoc -T lint -W warning $(MANPAGES)

# test/checkout-0700 builds and runs the same programs again from a copy of
# the tree below a 0700 directory (a root user's clone in /root is such).
check: deps
	@$(MAKE) --no-print-directory check-build
	@$(MAKE) --no-print-directory check-man
	@sh test/run $(TESTS) $(SCRIPT_TESTS) test/checkout-0700

check-build: all $(TESTS) test/header-c99.o test/header-cxx.o

# Tests that run the programs build them first (order-only, so that
# check-asan's flags do not rebuild them with sanitizers).
test/test-lockdctl test/test-helper: | lockdctl lockd-helper
test/test-helper: test/fake-systemd.h test/stallfs.h | test/stallfs

# A FUSE filesystem that hangs on demand (libfuse3), for hung_filesystem.
test/stallfs: test/stallfs.c
	$(CC) $(ALL_CFLAGS) -o $@ $< $(shell pkg-config --cflags --libs fuse3) -lpthread $(LDFLAGS)

# The same tests under ASan+UBSan, with the helper and lockdctl they run
# built with the sanitizers too (lockd-helper.asan, lockdctl.asan).
ASAN_FLAGS = -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all
ASAN_PROGRAMS = lockd-helper.asan lockdctl.asan

lockd-helper.asan: $(HELPER_DEPS)
	$(CC) $(ALL_CFLAGS) $(ASAN_FLAGS) $(SYSTEMD_CFLAGS) -o $@ $(HELPER_SRC) -lpthread $(SYSTEMD_LIBS) \
		$(SODIUM_LIBS) $(LDFLAGS)

lockdctl.asan: $(LOCKDCTL_SRC) lockdctl.h lockd.c lockd.h
	$(CC) $(ALL_CFLAGS) $(ASAN_FLAGS) -o $@ $(LOCKDCTL_SRC) lockd.c -lpthread $(SODIUM_LIBS) \
		$(LDFLAGS)

check-asan: deps
	@$(MAKE) --no-print-directory clean-tests
	@$(MAKE) --no-print-directory lockd-helper lockdctl $(ASAN_PROGRAMS)
	@$(MAKE) --no-print-directory CFLAGS="$(ASAN_FLAGS)" $(TESTS)
	@ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
		LOCKD_HELPER_BIN=$(CURDIR)/lockd-helper.asan LOCKD_TEST_HELPER=$(CURDIR)/lockd-helper.asan \
		LOCKD_TEST_LOCKDCTL=$(CURDIR)/lockdctl.asan \
		sh test/run $(TESTS); rc=$$?; $(MAKE) --no-print-directory clean-tests; exit $$rc

# The helper and CLI tests with every helper they start (and its re-execs,
# self-tests and keeper children) under valgrind's memcheck; an error or a
# leak makes the helper exit 99 and its case fail.  tools/valgrind finds or
# fetches a valgrind that knows the pidfd calls.
VALGRIND_TESTS = test/test-helper test/test-lockdctl
VALGRIND_FLAGS = -q --error-exitcode=99 --leak-check=full --show-leak-kinds=definite \
	--errors-for-leak-kinds=definite --trace-children=yes --track-fds=no --vgdb=no

check-valgrind: deps
	@$(MAKE) --no-print-directory lockd-helper lockdctl $(VALGRIND_TESTS)
	@vg=$$(sh tools/valgrind) && LOCKD_TEST_VALGRIND="$$vg $(VALGRIND_FLAGS)" \
		sh test/run $(VALGRIND_TESTS)

# The GlusterFS figures (lock loss across hosts, a lease there) come from
# check-cluster --bench, which needs root.
bench: deps
	@$(MAKE) --no-print-directory CFLAGS="-O2 -g" $(BENCHES) lockd-helper lockdctl \
		$(CLUSTER_TEST_PROGS)
	@for b in $(BENCHES); do ./$$b || exit 1; done
	@if [ "$$(id -u)" = 0 ]; then bash test/check-cluster --bench; \
	else echo "# GlusterFS figures (make bench as root): not measured"; fi

bench/bench-%: bench/bench-%.c bench/bench.h lockd.c lockd.h
	$(CC) $(ALL_CFLAGS) -o $@ $< lockd.c -lpthread $(SODIUM_LIBS)

# libFuzzer targets (clang, Debian's libclang-rt-14-dev).  `make fuzz` runs
# each for FUZZ_TIME seconds; a crash, hang or runaway allocation leaves its
# input in fuzz/ as crash-*, timeout-* or oom-* and fails the run.
FUZZ_CC    ?= clang
FUZZ_TIME  ?= 20
FUZZ_FLAGS  = -std=gnu11 -g -O1 -fsanitize=fuzzer,address,undefined \
              -fno-sanitize-recover=all -I. $(SODIUM_CFLAGS)
FUZZERS     = fuzz/fuzz-proto fuzz/fuzz-state fuzz/fuzz-dispatch

fuzz/fuzz-proto: fuzz/fuzz-proto.c fuzz/fuzz.h lockd.c lockd.h
	$(FUZZ_CC) $(FUZZ_FLAGS) -o $@ fuzz/fuzz-proto.c $(SODIUM_LIBS)

fuzz/fuzz-state: fuzz/fuzz-state.c fuzz/fuzz.h $(HELPER_DEPS)
	$(FUZZ_CC) $(FUZZ_FLAGS) $(SYSTEMD_CFLAGS) -o $@ fuzz/fuzz-state.c lockd-helper-fs.c lockd-keeper.c -lpthread \
		$(SYSTEMD_LIBS) $(SODIUM_LIBS)

fuzz/fuzz-dispatch: fuzz/fuzz-dispatch.c fuzz/fuzz.h $(HELPER_DEPS)
	$(FUZZ_CC) $(FUZZ_FLAGS) $(SYSTEMD_CFLAGS) -o $@ fuzz/fuzz-dispatch.c lockd-helper-fs.c lockd-keeper.c -lpthread \
		$(SYSTEMD_LIBS) $(SODIUM_LIBS)

fuzz-build: $(FUZZERS)

fuzz: deps fuzz-build
	@for f in $(FUZZERS); do \
		n=$${f#fuzz/fuzz-}; mkdir -p fuzz/corpus-$$n; \
		echo "# $$f for $(FUZZ_TIME) s"; \
		ASAN_OPTIONS=detect_leaks=1 ./$$f -max_total_time=$(FUZZ_TIME) \
			-timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=1024 -max_len=70000 \
			-dict=fuzz/$$n.dict -artifact_prefix=fuzz/ -print_final_stats=1 \
			fuzz/corpus-$$n || exit 1; \
	done

# --- libvirt lock-driver plugin (lockd-libvirt.c) -----------------------------
# `lock_manager = "lockd-libvirt"` in /etc/libvirt/qemu.conf makes libvirtd load
# lockd-libvirt.so from <libvirt's libdir>/libvirt/lock-driver.  That directory is
# taken from libvirt's pkg-config data when libvirt-dev is installed, else from
# the compiler's multiarch triplet (Debian: /usr/lib/x86_64-linux-gnu), else
# /usr/lib64 or /usr/lib.  PREFIX does not apply: libvirtd reads no other place.
# Override with `make install-libvirt LIBVIRT_LOCK_DRIVER_DIR=...`.
LIBVIRT_LIBDIR = $(shell pkg-config --variable=libdir libvirt 2>/dev/null || \
	{ t=$$($(CC) -print-multiarch 2>/dev/null); \
	  if [ -n "$$t" ]; then echo /usr/lib/$$t; \
	  elif [ -d /usr/lib64 ]; then echo /usr/lib64; else echo /usr/lib; fi; })
LIBVIRT_LOCK_DRIVER_DIR ?= $(LIBVIRT_LIBDIR)/libvirt/lock-driver
LIBVIRT_TEST_PROGS = test/libvirt/lease-poller test/libvirt/fake-libvirt test/libvirt/lose-lease

.PHONY: install-libvirt uninstall-libvirt check-libvirt check-migration

# lockd.c is built into the plugin with every symbol hidden (LOCKD_API empty):
# the plugin exports virLockDriverImpl and nothing else.
$(LIBVIRT_PLUGIN): lockd-libvirt.c lockd.c lockd.h
	$(CC) $(ALL_CFLAGS) $(PIC_CFLAGS) -DLOCKD_API= -shared -Wl,--no-undefined \
		-o $@ lockd-libvirt.c lockd.c $(SODIUM_LIBS) -ldl $(LDFLAGS)

$(LIBVIRT_PLUGIN_OLD): $(LIBVIRT_PLUGIN)
	ln -sf $(LIBVIRT_PLUGIN) $@

test/libvirt/lease-poller: test/libvirt/lease-poller.c lockd.c lockd.h
	$(CC) $(ALL_CFLAGS) -o $@ test/libvirt/lease-poller.c lockd.c $(SODIUM_LIBS)

test/libvirt/lose-lease: test/libvirt/lose-lease.c
	$(CC) $(ALL_CFLAGS) -o $@ test/libvirt/lose-lease.c

# -rdynamic: the plugin finds the test's virReportErrorHelper as it finds
# libvirt's, through dlsym(RTLD_DEFAULT).
test/libvirt/fake-libvirt: test/libvirt/fake-libvirt.c test/libvirt/vlm.h lockd.c lockd.h
	$(CC) $(ALL_CFLAGS) -rdynamic -o $@ test/libvirt/fake-libvirt.c lockd.c \
		$(SODIUM_LIBS) -ldl

install-libvirt: $(LIBVIRT_PLUGIN)
	install -d $(DESTDIR)$(LIBVIRT_LOCK_DRIVER_DIR)
	install -m 0755 $(LIBVIRT_PLUGIN) $(DESTDIR)$(LIBVIRT_LOCK_DRIVER_DIR)/$(LIBVIRT_PLUGIN)
	ln -sf $(LIBVIRT_PLUGIN) $(DESTDIR)$(LIBVIRT_LOCK_DRIVER_DIR)/$(LIBVIRT_PLUGIN_OLD)

uninstall-libvirt:
	rm -f $(DESTDIR)$(LIBVIRT_LOCK_DRIVER_DIR)/$(LIBVIRT_PLUGIN) \
	      $(DESTDIR)$(LIBVIRT_LOCK_DRIVER_DIR)/$(LIBVIRT_PLUGIN_OLD)

# Real libvirtd and QEMU in a private mount namespace (root; installs
# libvirt-daemon-system and qemu-system-x86 when missing).
check-libvirt: deps
	@$(MAKE) --no-print-directory $(LIBVIRT_PLUGIN) $(LIBVIRT_PLUGIN_OLD) lockd-helper lockdctl \
		$(LIBVIRT_TEST_PROGS)
	@bash test/check-libvirt

# The real virtlockd (driven through libvirt's own lock plugin), lockd
# acquirers and gc with no minimum age racing on the same disks: never two
# holders at once (root; installs libvirt-daemon-system when missing).
.PHONY: check-gc-virtlockd
test/libvirt/gc-race: test/libvirt/gc-race.c test/libvirt/vlm.h lockd.c lockd.h
	$(CC) $(ALL_CFLAGS) -o $@ test/libvirt/gc-race.c lockd.c $(SODIUM_LIBS) $(LDFLAGS)

check-gc-virtlockd: deps
	@$(MAKE) --no-print-directory test/libvirt/gc-race
	@bash test/check-gc-virtlockd

# Two libvirtd hosts (mount namespaces with their own /run, /var/lib/libvirt
# and host_uuid) on one lockspace and one helper, live-migrating a TCG guest
# both ways: the lease follows the guest (root; installs what check-libvirt
# does).
check-migration: deps
	@$(MAKE) --no-print-directory $(LIBVIRT_PLUGIN) lockd-helper lockdctl
	@bash test/check-migration

# --- a real systemd 252 as PID 1 (test/check-systemd) --------------------------
# Root; installs systemd-container and debootstrap when missing and builds a
# minbase bookworm root file system once (/var/tmp/lockd-systemd-root).
SYSTEMD_TEST_PROGS = test/systemd/lease-watch

.PHONY: check-systemd

test/systemd/lease-watch: test/systemd/lease-watch.c lockd.c lockd.h
	$(CC) $(ALL_CFLAGS) -o $@ test/systemd/lease-watch.c lockd.c $(SODIUM_LIBS)

check-systemd: deps
	@$(MAKE) --no-print-directory lockd-helper lockdctl $(SYSTEMD_TEST_PROGS)
	@bash test/check-systemd

# Two hosts sharing a lockspace on a real GlusterFS volume: a server and two
# FUSE clients, each in a network namespace of its own (root; installs
# glusterfs-server and glusterfs-client when missing).
.PHONY: check-cluster
CLUSTER_TEST_PROGS = test/cluster/lkhold test/cluster/handoff-check

test/cluster/lkhold: test/cluster/lkhold.c
	$(CC) $(ALL_CFLAGS) -o $@ $< $(LDFLAGS)

test/cluster/handoff-check: test/cluster/handoff-check.c lockd.c lockd.h
	$(CC) $(ALL_CFLAGS) -o $@ test/cluster/handoff-check.c lockd.c $(SODIUM_LIBS) $(LDFLAGS)

check-cluster: deps
	@$(MAKE) --no-print-directory lockd-helper lockdctl $(CLUSTER_TEST_PROGS)
	@bash test/check-cluster

install: all install-libvirt
	install -d $(DESTDIR)$(LIBDIR) $(DESTDIR)$(INCLUDEDIR) $(DESTDIR)$(PKGCONFIGDIR) \
		$(DESTDIR)$(BINDIR) $(DESTDIR)$(SBINDIR) $(DESTDIR)$(MANDIR)/man1 \
		$(DESTDIR)$(MANDIR)/man3 $(DESTDIR)$(MANDIR)/man7 $(DESTDIR)$(MANDIR)/man8 \
		$(DESTDIR)$(UNITDIR) \
		$(DESTDIR)$(USERUNITDIR) $(DESTDIR)$(BASHCOMPDIR)
	install -m 0644 lockd.h $(DESTDIR)$(INCLUDEDIR)/lockd.h
	install -m 0644 liblockd.a $(DESTDIR)$(LIBDIR)/liblockd.a
	install -m 0755 $(SONAME) $(DESTDIR)$(LIBDIR)/$(SONAME)
	ln -sf $(SONAME) $(DESTDIR)$(LIBDIR)/liblockd.so
	install -m 0644 lockd.pc $(DESTDIR)$(PKGCONFIGDIR)/lockd.pc
	install -m 0755 lockdctl $(DESTDIR)$(BINDIR)/lockdctl
	install -m 0755 lockd-helper $(DESTDIR)$(SBINDIR)/lockd-helper
	install -m 0644 man/lockdctl.1 $(DESTDIR)$(MANDIR)/man1/lockdctl.1
	install -m 0644 man/lockd.3 $(DESTDIR)$(MANDIR)/man3/lockd.3
	install -m 0644 man/lockd-protocol.7 $(DESTDIR)$(MANDIR)/man7/lockd-protocol.7
	install -m 0644 man/lockd-helper.8 $(DESTDIR)$(MANDIR)/man8/lockd-helper.8
	install -m 0644 completion/lockdctl.bash $(DESTDIR)$(BASHCOMPDIR)/lockdctl
	for u in $(UNITS); do sed 's|@SBINDIR@|$(SBINDIR)|g' $$u > \
		$(DESTDIR)$(UNITDIR)/$${u##*/}; done
	for u in $(USERUNITS); do sed 's|@SBINDIR@|$(SBINDIR)|g' $$u > \
		$(DESTDIR)$(USERUNITDIR)/$${u##*/}; done

uninstall: uninstall-libvirt
	rm -f $(DESTDIR)$(INCLUDEDIR)/lockd.h $(DESTDIR)$(LIBDIR)/liblockd.a \
	      $(DESTDIR)$(LIBDIR)/$(SONAME) $(DESTDIR)$(LIBDIR)/liblockd.so \
	      $(DESTDIR)$(PKGCONFIGDIR)/lockd.pc $(DESTDIR)$(BINDIR)/lockdctl \
	      $(DESTDIR)$(SBINDIR)/lockd-helper $(DESTDIR)$(MANDIR)/man1/lockdctl.1 \
	      $(DESTDIR)$(MANDIR)/man3/lockd.3 $(DESTDIR)$(MANDIR)/man7/lockd-protocol.7 \
	      $(DESTDIR)$(MANDIR)/man8/lockd-helper.8 $(DESTDIR)$(BASHCOMPDIR)/lockdctl \
	      $(addprefix $(DESTDIR)$(UNITDIR)/,$(notdir $(UNITS))) \
	      $(addprefix $(DESTDIR)$(USERUNITDIR)/,$(notdir $(USERUNITS)))

clean-tests:
	rm -f $(TESTS) $(BENCHES) test/*.o test/stallfs

clean: clean-tests
	rm -f *.o liblockd.a liblockd.so $(SONAME) lockd.pc lockd.pc.vars $(PROGRAMS) $(ASAN_PROGRAMS) $(FUZZERS) \
	      $(LIBVIRT_PLUGIN) $(LIBVIRT_PLUGIN_OLD) $(LIBVIRT_TEST_PROGS) test/libvirt/gc-race $(SYSTEMD_TEST_PROGS) $(CLUSTER_TEST_PROGS) \
	      fuzz/crash-* fuzz/leak-* fuzz/oom-* fuzz/timeout-*
