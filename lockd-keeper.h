/* SPDX-License-Identifier: MIT */
/*
 * lockd-keeper.h: keep a lockd-helper's stored fds across its crashes,
 * without systemd.
 *
 * NAME
 *     keeper_run - run as the keeper of lockd-helper
 *
 * SYNOPSIS
 *     #include "lockd-keeper.h"
 *
 *     int keeper_run(int listen_fd, const char *socket_path,
 *                    const char *helper_path, char **helper_argv);
 *
 * OVERVIEW
 *     Under systemd, lockd-helper(8) survives its own crash through the
 *     service's fd store: it pushes two fds there (the "state" memfd and an
 *     "S<n>" stash socket whose queue holds every lease fd and owner pidfd),
 *     and when it dies systemd keeps them, restarts it, and passes them back
 *     with the listening socket.  The leases never become free, because the
 *     open file descriptions that carry their OFD locks never close.
 *
 *     Without systemd (OpenRC, a container, a helper started by hand) nobody
 *     holds those fds, and a crash of the helper frees every lease.
 *     `lockd-helper --keeper` closes that gap: the process forks into a
 *     keeper, which plays exactly that part of systemd and nothing else,
 *     and a helper, its child, which runs unchanged: it sees NOTIFY_SOCKET,
 *     LISTEN_FDS and --fd-store-max as it would under systemd, so the same
 *     adoption code takes its leases back.
 *
 *     The keeper is small on purpose.  It never reads from the listening
 *     socket nor from any stored fd, so no client input reaches it; it takes
 *     no lock and opens no lease; it trusts a notification only from its
 *     current child.  What is left to crash is a loop over three fds.
 *
 * DESCRIPTION
 *     keeper_run() starts helper_path with helper_argv (argv[0] included,
 *     without --keeper; the keeper appends "--fd-store-max 8"), and restarts
 *     it whenever it exits with any status but 0 or is killed by a signal.
 *     It returns only after a helper has exited 0.
 *
 *     listen_fd is the helper's listening socket, already bound by the
 *     caller.  The keeper owns it from now on: every helper instance gets it
 *     as its first passed fd, named "helper.sock".  Clients that connect
 *     while no helper runs wait in its backlog and are answered by the next
 *     instance.
 *
 *     socket_path, if not NULL, is the file listen_fd is bound to.  The
 *     keeper removes it when it returns, if it is still a socket (and the
 *     same one it was when keeper_run() was called): the helper instances,
 *     which did not bind it, never do.
 *
 *     Each instance is started as systemd starts a Type=notify service:
 *       - every signal unblocked, every disposition the default;
 *       - fd 3 is listen_fd, fds 4... the stored fds in the order they were
 *         stored, without FD_CLOEXEC; every other fd from 3 up is closed;
 *       - LISTEN_PID, LISTEN_FDS and LISTEN_FDNAMES ("helper.sock:NAME...")
 *         describe them; WATCHDOG_USEC and WATCHDOG_PID are removed;
 *       - NOTIFY_SOCKET is "@lockd-keeper/<pid>/<random>", an abstract
 *         AF_UNIX datagram socket of this keeper with SO_PASSCRED on.
 *     If exec fails the child logs it and exits 127, which counts as a
 *     crash: the keeper tries again.
 *
 *     Notifications.  A datagram is accepted only if the kernel's credentials
 *     say it comes from the current helper's pid and from the keeper's own
 *     uid; anything else (another process of the same uid, a
 *     helper's --self-test child, a message of 4096 bytes or more, one with a
 *     NUL byte or truncated control data) is ignored and its fds closed, with
 *     a rate-limited warning.  In an accepted message, one assignment a line:
 *       FDSTORE=1       keep the message's fds under FDNAME= ("stored" if it
 *                       is missing or invalid); several may share a name
 *       FDSTOREREMOVE=1 close every stored fd named FDNAME=
 *       FDPOLL=0        accepted: the keeper never polls a stored fd
 *       READY=1         logged once per instance
 *       STOPPING=1, STATUS=, WATCHDOG=1, MAINPID=, anything else: ignored
 *     Fds sent without FDSTORE=1 are closed.  At most 16 fds are stored;
 *     beyond that the extra fds are closed and a warning logged (the helper
 *     keeps its own copies, so this drops crash protection, not a lease).
 *
 *     Exits.  A helper that exits 0 was stopped on purpose (`lockdctl
 *     stop-helper`) or timed out idle with no lease: every stored fd is
 *     closed, the socket removed, and keeper_run() returns 0.  Any other end
 *     (a signal such as SIGKILL or SIGSEGV, status 75 "stopped by SIGTERM
 *     with leases in the store", 1, 127) is logged and a new instance is
 *     started with every stored fd, after 100 ms; the delay doubles for each
 *     instance that lived less than 10 s, up to 5 s, and is back to 100 ms
 *     after one that lived longer.  The keeper never gives up: giving up
 *     would drop every lease.
 *
 *     Signals.  SIGTERM, SIGINT, SIGHUP and SIGUSR1 sent to the keeper are
 *     passed on to the current helper and do not stop the keeper: the helper
 *     decides.  On SIGTERM with leases held it exits 75 and is restarted, so
 *     a stop that would drop leases is refused; on SIGTERM without leases it
 *     exits 0 and so does the keeper; SIGHUP and SIGUSR1 re-execute it in
 *     place (same pid, its stored fds untouched).  A signal that comes while
 *     no helper runs (during the restart delay) is logged and dropped.
 *     SIGPIPE is ignored.
 *
 *     If the keeper itself is killed, the helper runs on with every lease
 *     (the keeper never sets PR_SET_PDEATHSIG on it): only the protection
 *     against the helper's own crash is gone: its later fd store
 *     notifications go nowhere, and a helper crash after that frees its
 *     leases, as without --keeper.  The socket file is left behind; the next
 *     helper or keeper to bind it replaces it, as it replaces any socket
 *     nobody answers on.
 *
 * CALLING SEQUENCE
 *     Call it from main(), before any thread is started (it forks) and with
 *     no other child process to reap.  It blocks SIGTERM, SIGINT, SIGHUP and
 *     SIGUSR1, and resets SIGCHLD to its default disposition.  It logs one
 *     line per event to stderr with sd-daemon priority prefixes
 *     ("<4>lockd-keeper: ...").  Use it once per process.
 *
 * RETURN VALUE
 *     0 once a helper has exited 0.  Otherwise a negative errno, before any
 *     helper was started; listen_fd is then closed and the socket file
 *     removed as on success, except for -EINVAL, which touches nothing
 *     (listen_fd is still the caller's).
 *
 * ERRORS
 *     -EINVAL  listen_fd is negative, helper_path is NULL or not absolute,
 *              helper_argv is NULL or empty.
 *     -ENOMEM  out of memory.
 *     -ENOSYS  the kernel has no pidfd_open(2) (Linux 5.3 is needed).
 *     Any -errno of pidfd_open(2), getrandom(2), socket(2), bind(2),
 *     setsockopt(2), sigprocmask(2) or signalfd(2) while setting up.
 *     Every error but -EINVAL is logged.
 *
 * SEE ALSO
 *     lockd-helper(8), sd_notify(3) (FDSTORE=), sd_listen_fds(3),
 *     systemd.service(5) (FileDescriptorStoreMax=, RestartForceExitStatus=).
 */
#ifndef LOCKD_KEEPER_H
#define LOCKD_KEEPER_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Run as the keeper of a lockd-helper: never returns until the helper exits 0. */
int keeper_run(int listen_fd, const char *socket_path, const char *helper_path,
               char **helper_argv);

/*
 * Append text to the log line out[0..n) of size bytes, every control byte
 * (C1 included), backslash and byte of no well-formed UTF-8 character
 * written as \xHH, so that nothing it names can split the line, forge
 * another or act on a terminal; returns the new length.  It stops short of the
 * last 5 bytes, which leaves room for the caller's newline: a size of
 * 4 * strlen(text) + n + 2 never truncates.  The keeper's log and the
 * helper's (lockd-helper.c, log_line()) both write through it.
 */
size_t log_escape(char *out, size_t size, size_t n, const char *text);

#ifdef __cplusplus
}
#endif

#endif /* LOCKD_KEEPER_H */
