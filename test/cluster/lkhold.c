/* SPDX-License-Identifier: MIT */
/*
 * lkhold: take a lock on byte 0 of FILE the way another lock user would, for
 * test/check-cluster.
 *
 *   lkhold posix|ofd r|w FILE
 *
 * Opens FILE (read-write, creating it), tries F_SETLK (classic POSIX, as
 * virtlockd and QEMU take them) or F_OFD_SETLK once, without waiting.
 * Busy: prints "busy" and exits 75.  Held: prints "held", then holds the lock
 * until SIGTERM or SIGINT, and exits 0.  Anything else: a line on stderr and
 * exit 1.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int
main(int argc, char **argv)
{
    struct flock fl = {.l_whence = SEEK_SET, .l_start = 0, .l_len = 1};
    sigset_t set;
    int fd, cmd, sig;

    if (argc != 4 || (strcmp(argv[1], "posix") != 0 && strcmp(argv[1], "ofd") != 0) ||
        (strcmp(argv[2], "r") != 0 && strcmp(argv[2], "w") != 0)) {
        fprintf(stderr, "usage: lkhold posix|ofd r|w FILE\n");
        return 1;
    }
    cmd = argv[1][0] == 'p' ? F_SETLK : F_OFD_SETLK;
    fl.l_type = argv[2][0] == 'r' ? F_RDLCK : F_WRLCK;
    /* Blocked before the lock is taken: a SIGTERM right after "held" is
     * then always the one sigwait() takes. */
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigprocmask(SIG_BLOCK, &set, NULL);
    fd = open(argv[3], O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) {
        fprintf(stderr, "lkhold: open %s: %s\n", argv[3], strerror(errno));
        return 1;
    }
    if (fcntl(fd, cmd, &fl) < 0) {
        if (errno == EAGAIN || errno == EACCES) {
            printf("busy\n");
            return 75;
        }
        fprintf(stderr, "lkhold: lock %s: %s\n", argv[3], strerror(errno));
        return 1;
    }
    printf("held\n");
    fflush(stdout);
    sigwait(&set, &sig);
    return 0;
}
