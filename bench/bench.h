/* SPDX-License-Identifier: MIT */
/*
 * bench.h: the little that lockd's benchmarks share.  A benchmark measures a
 * lockd figure and, in the same run, on the same machine and filesystem, the
 * floor it is judged against (the bare system calls that cannot be avoided),
 * and prints both with their ratio.  Absolute numbers say more about the
 * machine than about lockd; the ratio is what a goal is set on.
 *
 * Every figure is the median of several rounds, each round timing many
 * operations, so that a burst of noise (another process, writeback) spoils
 * one round rather than the figure.  Errors end the program with status 1;
 * a missed goal is reported, not an error.
 */
#ifndef LOCKD_BENCH_H
#define LOCKD_BENCH_H

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

/* Rounds per figure; the median is reported. */
#define BENCH_ROUNDS 7

/* Width of the label column, so that the figures line up. */
#define BENCH_LABEL_WIDTH 56

static char bench_scratch[4096];

#define BENCH_DIE(...)                                                              \
    do {                                                                            \
        fprintf(stderr, "%s:%d: ", __FILE__, __LINE__);                             \
        fprintf(stderr, __VA_ARGS__);                                               \
        fputc('\n', stderr);                                                        \
        bench_cleanup();                                                            \
        exit(1);                                                                    \
    } while (0)

/* expr returns >= 0 on success, -errno on failure (lockd's convention). */
#define BENCH_OK(expr)                                                              \
    do {                                                                            \
        long long _r = (long long)(expr);                                           \
        if (_r < 0)                                                                 \
            BENCH_DIE("%s failed: %lld (%s)", #expr, _r, strerror((int)-_r));       \
    } while (0)

/* expr returns >= 0 on success, -1 with errno set on failure (libc's). */
#define BENCH_SYS(expr)                                                             \
    do {                                                                            \
        if ((expr) < 0)                                                             \
            BENCH_DIE("%s: %s", #expr, strerror(errno));                            \
    } while (0)

static inline int
bench_rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    remove(path);
    return 0;
}

/* Remove a directory tree (the scratch directory, or a round's subdirectory). */
static inline void
bench_rmrf(const char *path)
{
    nftw(path, bench_rm_one, 16, FTW_DEPTH | FTW_PHYS | FTW_MOUNT);
}

/* Remove the scratch directory, if one was made; safe to call twice. */
static inline void
bench_cleanup(void)
{
    if (bench_scratch[0]) {
        bench_rmrf(bench_scratch);
        bench_scratch[0] = '\0';
    }
}

/* Make the scratch directory under $TMPDIR (or /tmp); returns its path. */
static inline const char *
bench_scratch_make(void)
{
    const char *tmp = getenv("TMPDIR");

    snprintf(bench_scratch, sizeof(bench_scratch), "%s/lockd-bench.XXXXXX",
             tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(bench_scratch)) {
        bench_scratch[0] = '\0';
        BENCH_DIE("mkdtemp: %s", strerror(errno));
    }
    return bench_scratch;
}

/* A path inside the scratch directory, in a static buffer per call slot. */
static inline const char *bench_path(const char *fmt, ...)
    __attribute__((format(printf, 1, 2)));

static inline const char *
bench_path(const char *fmt, ...)
{
    static char bufs[4][4096 + 1024 + 2];
    static unsigned slot;
    char *b = bufs[slot++ % 4], name[1024];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(name, sizeof(name), fmt, ap);
    va_end(ap);
    snprintf(b, sizeof(bufs[0]), "%s/%s", bench_scratch, name);
    return b;
}

static inline int64_t
bench_now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static inline int
bench_cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return x < y ? -1 : x > y;
}

/* The median of v[0..n-1] (sorts v); the mean of the middle two for even n. */
static inline double
bench_median(double *v, size_t n)
{
    qsort(v, n, sizeof(*v), bench_cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* A name for the filesystem type of path, from statfs(2)'s f_type. */
static inline const char *
bench_fs_name(const char *path)
{
    struct statfs sfs;

    if (statfs(path, &sfs) < 0)
        return "unknown";
    switch ((unsigned long)sfs.f_type) {
    case 0xEF53UL: return "ext4";
    case 0x01021994UL: return "tmpfs";
    case 0x58465342UL: return "xfs";
    case 0x9123683EUL: return "btrfs";
    case 0x6969UL: return "nfs";
    case 0x794c7630UL: return "overlayfs";
    default: return "other";
    }
}

/* Print what the figures depend on: the machine, the filesystem, the command. */
static inline void
bench_header(const char *title, int argc, char **argv)
{
    struct utsname u;
    int i;

    printf("# %s\n# command:", title);
    for (i = 0; i < argc; i++)
        printf(" %s", argv[i]);
    if (uname(&u) < 0)
        memset(&u, 0, sizeof(u));
    printf("\n# machine: %ld cpus online, %s %s %s\n", sysconf(_SC_NPROCESSORS_ONLN),
           u.sysname, u.release, u.machine);
    printf("# scratch: %s (%s); each figure is the median of its rounds\n",
           bench_scratch, bench_fs_name(bench_scratch));
}

/* One figure in ns per operation, no goal. */
static inline void
bench_print_ns(const char *label, double ns)
{
    printf("%-*s %10.0f ns/op\n", BENCH_LABEL_WIDTH, label, ns);
}

/* One figure in ns per operation against its floor; returns 1 if the goal
 * (ratio at most goal) was met. */
static inline int
bench_print_ratio(const char *label, double ns, double floor_ns, const char *floor_name,
                  double goal)
{
    double ratio = ns / floor_ns;
    int met = ratio <= goal;

    printf("%-*s %10.0f ns/op  %5.2fx %s  goal <= %.2fx  %s\n", BENCH_LABEL_WIDTH,
           label, ns, ratio, floor_name, goal, met ? "met" : "MISSED");
    return met;
}

/* One figure as a rate (per second). */
static inline void
bench_print_rate(const char *label, double per_s, const char *unit)
{
    printf("%-*s %10.0f %s/s\n", BENCH_LABEL_WIDTH, label, per_s, unit);
}

#endif
