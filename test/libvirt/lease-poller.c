/* SPDX-License-Identifier: MIT */
/*
 * lease-poller: probe one disk's lease in a tight loop until SIGTERM, and say
 * whether it was ever seen free.  test/check-libvirt runs it across the
 * helper's re-exec (SIGUSR1): a lease dropped even for a moment is a failure,
 * and a shell loop of lockdctl calls would be too slow to see a short gap.
 *
 * usage: lease-poller DIR verbatim|canonical DISK
 * Prints "polling" after its first probe, and at exit
 * "probes N free M".  Exit status: 0 never free, 1 seen free, 2 error.
 */
#define _GNU_SOURCE
#include "lockd.h"

#include <signal.h>
#include <stdio.h>
#include <string.h>

static volatile sig_atomic_t stop;

static void
on_term(int sig)
{
    (void)sig;
    stop = 1;
}

int
main(int argc, char **argv)
{
    struct sigaction sa;
    unsigned long probes = 0, frees = 0;
    char key[LOCKD_KEY_SIZE];
    lockd_space *space;
    int r;

    if (argc != 4) {
        fprintf(stderr, "usage: lease-poller DIR verbatim|canonical DISK\n");
        return 2;
    }
    r = lockd_space_open(
        argv[1],
        LOCKD_OPEN_READONLY |
            (strcmp(argv[2], "canonical") ? LOCKD_OPEN_VERBATIM : LOCKD_OPEN_CANONICAL),
        &space);
    if (r >= 0)
        r = lockd_space_key(space, argv[3], key);
    if (r < 0) {
        fprintf(stderr, "lease-poller: %s: %s\n", argv[3], strerror(-r));
        return 2;
    }
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_term;
    sigaction(SIGTERM, &sa, NULL);
    while (!stop) {
        r = lockd_probe(space, key, NULL);
        if (r < 0) {
            fprintf(stderr, "lease-poller: probe: %s\n", strerror(-r));
            return 2;
        }
        frees += r == LOCKD_FREE;
        if (probes++ == 0) {
            printf("polling\n");
            fflush(stdout);
        }
    }
    printf("probes %lu free %lu\n", probes, frees);
    lockd_space_close(space);
    return frees ? 1 : 0;
}
