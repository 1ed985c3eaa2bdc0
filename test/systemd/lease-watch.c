/* SPDX-License-Identifier: MIT */
/*
 * lease-watch: probe the leases of some disks from a process that holds
 * nothing (lockd_probe(), F_OFD_GETLK), and lose one on purpose, for
 * test/check-systemd.
 *
 * usage: lease-watch held DIR DISK...
 *            probe every disk in a tight loop until SIGTERM or SIGINT;
 *            print "polling" after the first full round and, at exit,
 *            "rounds N free M" (M: probes that found a disk free).
 *            Exit status: 0 never free, 1 seen free, 2 error.
 *        lease-watch free SEC DIR DISK...
 *            wait until every disk is free, at most SEC seconds;
 *            exit status 0 all free, 1 timed out, 2 error.
 *        lease-watch lose PID NAME DIR DISK
 *            take DISK's lease and hand it to the helper (at the default
 *            socket) for process PID, registered as NAME, keeping a copy;
 *            then unlock the copy: the helper's fd is left without its
 *            lock, as a lost lock on shared storage leaves it.
 *            Exit status 0 done, 2 error.
 *
 * A shell loop of lockdctl calls is far too slow to see a lease dropped for a
 * moment while the helper restarts; this is not.  DIR is a verbatim lockspace
 * (the default kind), opened read-only: nothing is created or written.
 */
#define _GNU_SOURCE
#include "lockd.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static volatile sig_atomic_t stop;

static void
on_term(int sig)
{
    (void)sig;
    stop = 1;
}

static int
usage(void)
{
    fprintf(stderr, "usage: lease-watch held DIR DISK...\n"
                    "       lease-watch free SEC DIR DISK...\n"
                    "       lease-watch lose PID NAME DIR DISK\n");
    return 2;
}

static double
now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Probe every key once: the number found free, or -errno. */
static int
probe_all(const lockd_space *space, char (*keys)[LOCKD_KEY_SIZE], int n)
{
    int i, r, frees = 0;

    for (i = 0; i < n; i++) {
        r = lockd_probe(space, keys[i], NULL);
        if (r < 0)
            return r;
        frees += r == LOCKD_FREE;
    }
    return frees;
}

static int
watch_held(const lockd_space *space, char (*keys)[LOCKD_KEY_SIZE], int n)
{
    struct sigaction sa;
    unsigned long rounds = 0, frees = 0;
    int r;

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_term;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    while (!stop) {
        r = probe_all(space, keys, n);
        if (r < 0) {
            fprintf(stderr, "lease-watch: probe: %s\n", strerror(-r));
            return 2;
        }
        frees += (unsigned long)r;
        if (rounds++ == 0) {
            printf("polling\n");
            fflush(stdout);
        }
    }
    printf("rounds %lu free %lu\n", rounds, frees);
    return frees ? 1 : 0;
}

static int
wait_free(const lockd_space *space, char (*keys)[LOCKD_KEY_SIZE], int n, double sec)
{
    double deadline = now_s() + sec;
    struct timespec tick = {0, 10 * 1000 * 1000};
    int r;

    for (;;) {
        r = probe_all(space, keys, n);
        if (r < 0) {
            fprintf(stderr, "lease-watch: probe: %s\n", strerror(-r));
            return 2;
        }
        if (r == n)
            return 0;
        if (now_s() > deadline)
            return 1;
        nanosleep(&tick, NULL);
    }
}

static int
lose(int pid, const char *name, const char *dir, const char *disk)
{
    char key[LOCKD_KEY_SIZE];
    const char *keys[] = {key};
    lockd_space *space = NULL;
    lockd_lease *lease = NULL;
    lockd_conn *conn = NULL;
    int r;

    r = lockd_space_open(dir, LOCKD_OPEN_CREATE | LOCKD_OPEN_VERBATIM, &space);
    if (r == 0)
        r = lockd_space_key(space, disk, key);
    if (r == 0)
        r = lockd_acquire(space, 1, keys, NULL, LOCKD_TRY, &lease);
    if (r == 0)
        r = lockd_conn_open(NULL, &conn);
    if (r == 0)
        r = lockd_conn_register(conn, pid, -1, NULL, name);
    if (r == 0)
        r = lockd_conn_handoff(conn, pid, lease, &disk, NULL);
    if (r == 0)
        r = lockd_lease_release(lease); /* unlocks the description: the helper's copy too */
    else
        (void)lockd_lease_release(lease);
    lockd_conn_close(conn);
    lockd_space_close(space);
    if (r < 0) {
        fprintf(stderr, "lease-watch: %s: %s\n", disk, strerror(-r));
        return 2;
    }
    return 0;
}

int
main(int argc, char **argv)
{
    char (*keys)[LOCKD_KEY_SIZE];
    lockd_space *space;
    double sec = 0;
    int first, n, i, r;

    if (argc == 6 && strcmp(argv[1], "lose") == 0)
        return lose(atoi(argv[2]), argv[3], argv[4], argv[5]);
    if (argc >= 4 && strcmp(argv[1], "held") == 0)
        first = 2;
    else if (argc >= 5 && strcmp(argv[1], "free") == 0) {
        sec = atof(argv[2]);
        first = 3;
    } else
        return usage();
    n = argc - first - 1;
    keys = calloc((size_t)n, sizeof(*keys));
    if (!keys)
        return 2;
    r = lockd_space_open(argv[first], LOCKD_OPEN_READONLY | LOCKD_OPEN_VERBATIM, &space);
    if (r < 0) {
        fprintf(stderr, "lease-watch: %s: %s\n", argv[first], strerror(-r));
        return 2;
    }
    for (i = 0; i < n; i++) {
        r = lockd_space_key(space, argv[first + 1 + i], keys[i]);
        if (r < 0) {
            fprintf(stderr, "lease-watch: %s: %s\n", argv[first + 1 + i], strerror(-r));
            return 2;
        }
    }
    r = first == 2 ? watch_held(space, keys, n) : wait_free(space, keys, n, sec);
    lockd_space_close(space);
    free(keys);
    return r;
}
