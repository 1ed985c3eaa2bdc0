/* SPDX-License-Identifier: MIT */
/*
 * handoff-check: hand the helper a lease fd that does not hold its lock,
 * for test/check-cluster.  The helper must refuse it (EBADFD) whatever the
 * filesystem: on GlusterFS it cannot read the lock from /proc/self/fdinfo
 * and asks the server instead.
 *
 *   handoff-check SOCKET LOCKSPACE RESOURCE free
 *   handoff-check SOCKET LOCKSPACE RESOURCE taken LKHOLD OTHER-PATH
 *   handoff-check SOCKET LOCKSPACE RESOURCE notice
 *
 * Takes RESOURCE's lease in LOCKSPACE, unlocks its fd behind the library's
 * back, and hands it over for this process.  "taken": first another holder
 * takes the lock through OTHER-PATH (the same lease file, seen from another
 * host: LKHOLD ofd w OTHER-PATH), so that the file is locked, but not by
 * the fd handed over.  Prints the hand-over's result ("refused: ...") and
 * exits 0 if it was refused with EBADFD, 1 otherwise.
 *
 * "notice": the release of a manager that keeps its copies.  Takes the
 * lease, hands it over for this process (on-loss action report: the
 * helper may see the lease lost between the unlock and the notice), then
 * releases its own copy (which frees the lease) and sends the one-way
 * release notice, and waits until the helper holds nothing.  Prints
 * "released" and exits 0, or 1.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "lockd.h"

/* Run LKHOLD ofd w path; returns its pid once it says "held", else -1. */
static pid_t
hold_elsewhere(const char *lkhold, const char *path)
{
    char buf[16] = "";
    int p[2];
    pid_t pid;

    if (pipe2(p, O_CLOEXEC) < 0)
        return -1;
    pid = fork();
    if (pid == 0) {
        /* Dies with us, even if we are killed: it is in none of the test's
         * namespaces, where its cleanup looks. */
        if (prctl(PR_SET_PDEATHSIG, SIGTERM) < 0 || getppid() == 1 || dup2(p[1], 1) < 0)
            _exit(127);
        execl(lkhold, lkhold, "ofd", "w", path, (char *)NULL);
        _exit(127);
    }
    close(p[1]);
    if (pid < 0 || read(p[0], buf, sizeof(buf) - 1) <= 0 || strncmp(buf, "held", 4) != 0) {
        fprintf(stderr, "handoff-check: %s did not take the lock: %s\n", lkhold, buf);
        close(p[0]);
        return -1;
    }
    close(p[0]);
    return pid;
}

static int
notice(lockd_conn *conn, lockd_lease *lease)
{
    uint64_t id, leases = 1;
    int r, i;

    r = lockd_conn_register_on_loss(conn, getpid(), -1, NULL, "handoff-check",
                                    LOCKD_ON_LOSS_REPORT, NULL);
    if (r == 0)
        r = lockd_conn_handoff(conn, getpid(), lease, NULL, &id);
    if (r == 0)
        r = lockd_lease_release(lease);
    if (r == 0)
        r = lockd_conn_release_notice(conn, getpid(), 1, &id);
    for (i = 0; r == 0 && leases > 0 && i < 500; i++) {
        r = lockd_conn_status(conn, NULL, &leases, NULL);
        if (r == 0 && leases > 0)
            usleep(10000);
    }
    printf(r == 0 && leases == 0 ? "released\n" : "not released: %s\n",
           r < 0 ? strerror(-r) : "the helper still holds it");
    return r == 0 && leases == 0 ? 0 : 1;
}

int
main(int argc, char **argv)
{
    struct flock fl = {.l_type = F_UNLCK, .l_whence = SEEK_SET, .l_len = 1};
    char key[LOCKD_KEY_SIZE];
    const char *keys[1] = {key};
    lockd_space *space = NULL;
    lockd_lease *lease = NULL;
    lockd_conn *conn = NULL;
    pid_t other = 0;
    int r;

    if (argc < 5 || (strcmp(argv[4], "free") != 0 && strcmp(argv[4], "notice") != 0 &&
                     (strcmp(argv[4], "taken") != 0 || argc != 7))) {
        fprintf(stderr, "usage: handoff-check SOCKET LOCKSPACE RESOURCE free|notice|taken "
                        "[LKHOLD OTHER-PATH]\n");
        return 2;
    }
    if ((r = lockd_space_open(argv[2], 0, &space)) < 0 ||
        (r = lockd_key_resource(argv[3], strlen(argv[3]), key)) < 0 ||
        (r = lockd_acquire(space, 1, keys, NULL, LOCKD_TRY, &lease)) < 0 ||
        (r = lockd_conn_open(argv[1], &conn)) < 0 ||
        (r = lockd_conn_register(conn, getpid(), -1, NULL, "handoff-check")) < 0) {
        fprintf(stderr, "handoff-check: set-up: %s\n", strerror(-r));
        return 2;
    }
    if (strcmp(argv[4], "notice") == 0) {
        r = notice(conn, lease);
        lockd_conn_close(conn);
        lockd_space_close(space);
        return r;
    }
    if (fcntl(lockd_lease_fd(lease, 0), F_OFD_SETLK, &fl) < 0) {
        fprintf(stderr, "handoff-check: unlock: %s\n", strerror(errno));
        return 2;
    }
    if (strcmp(argv[4], "taken") == 0 && (other = hold_elsewhere(argv[5], argv[6])) < 0)
        return 2;
    r = lockd_conn_handoff(conn, getpid(), lease, NULL, NULL);
    printf(r == 0 ? "accepted\n" : "refused: %s\n", strerror(-r));
    if (other > 0) {
        kill(other, SIGTERM);
        waitpid(other, NULL, 0);
    }
    lockd_lease_forget(lease);
    lockd_conn_close(conn);
    lockd_space_close(space);
    return r == -EBADFD ? 0 : 1;
}
