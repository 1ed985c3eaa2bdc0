/* SPDX-License-Identifier: MIT */
/*
 * test.h: the little that lockd's tests share.  Each test program lists its
 * cases in main() with TEST_RUN(); every case runs in a forked child, inside
 * a scratch directory of its own that the parent removes afterwards, under an
 * alarm so a hang fails instead of stalling the suite.  The program prints one
 * "ok - NAME" or "not ok - NAME" line per case; test/run totals them.
 */
#ifndef LOCKD_TEST_H
#define LOCKD_TEST_H

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* The scratch directory of the running case (absolute, no trailing slash). */
static char test_scratch[4096];

#define TEST_FAIL(...)                                                              \
    do {                                                                            \
        fprintf(stderr, "%s:%d: ", __FILE__, __LINE__);                             \
        fprintf(stderr, __VA_ARGS__);                                               \
        fputc('\n', stderr);                                                        \
        _exit(1);                                                                   \
    } while (0)

/* expr returns >= 0 on success, -errno on failure. */
#define ASSERT_OK(expr)                                                             \
    do {                                                                            \
        long long _r = (long long)(expr);                                           \
        if (_r < 0)                                                                 \
            TEST_FAIL("%s failed: %lld (%s)", #expr, _r, strerror((int)-_r));       \
    } while (0)

/* expr returns exactly -err. */
#define ASSERT_ERR(expr, err)                                                       \
    do {                                                                            \
        long long _r = (long long)(expr);                                           \
        if (_r != -(long long)(err))                                                \
            TEST_FAIL("%s = %lld (%s), expected -%s", #expr, _r,                    \
                      _r < 0 ? strerror((int)-_r) : "success", #err);               \
    } while (0)

#define ASSERT_INT_EQ(a, b)                                                         \
    do {                                                                            \
        long long _a = (long long)(a), _b = (long long)(b);                         \
        if (_a != _b)                                                               \
            TEST_FAIL("%s == %s: %lld != %lld", #a, #b, _a, _b);                    \
    } while (0)

#define ASSERT_TRUE(x)                                                              \
    do {                                                                            \
        if (!(x))                                                                   \
            TEST_FAIL("%s is false", #x);                                           \
    } while (0)

#define ASSERT_STR_EQ(a, b)                                                         \
    do {                                                                            \
        const char *_a = (a), *_b = (b);                                            \
        if (!_a || !_b || strcmp(_a, _b) != 0)                                      \
            TEST_FAIL("%s == %s: \"%s\" != \"%s\"", #a, #b, _a ? _a : "(null)",     \
                      _b ? _b : "(null)");                                          \
    } while (0)

/* A path inside the scratch directory; returns a static buffer per call slot. */
static inline const char *
test_path(const char *name)
{
    static char bufs[8][4096];
    static unsigned slot;
    char *b = bufs[slot++ % 8];

    if ((size_t)snprintf(b, sizeof(bufs[0]), "%s/%s", test_scratch, name) >= sizeof(bufs[0]))
        TEST_FAIL("path too long: %s/%s", test_scratch, name);
    return b;
}

static inline int64_t
test_now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Poll cond (an expression) every millisecond for up to ms milliseconds;
 * evaluates to 1 when it became true, 0 on timeout.  Tests wait on conditions
 * with this, never on a fixed sleep. */
#define WAIT_UNTIL(cond, ms)                                                        \
    ({                                                                              \
        int64_t _end = test_now_ms() + (ms);                                        \
        int _ok = 0;                                                                \
        for (;;) {                                                                  \
            if (cond) {                                                             \
                _ok = 1;                                                            \
                break;                                                              \
            }                                                                       \
            if (test_now_ms() > _end)                                               \
                break;                                                              \
            usleep(1000);                                                           \
        }                                                                           \
        _ok;                                                                        \
    })

/*
 * `make check-valgrind` runs each helper the tests start under valgrind:
 * $LOCKD_TEST_VALGRIND holds the words put before the helper's argv (split
 * at spaces).  They are kept in buf; returns their count, 0 when unset.
 */
static inline size_t
test_wrapper(char *buf, size_t bufcap, char **words, size_t cap)
{
    const char *env = getenv("LOCKD_TEST_VALGRIND");
    char *save = NULL, *w;
    size_t n = 0;

    if (!env || !*env)
        return 0;
    if ((size_t)snprintf(buf, bufcap, "%s", env) >= bufcap)
        TEST_FAIL("LOCKD_TEST_VALGRIND is too long");
    for (w = strtok_r(buf, " ", &save); w; w = strtok_r(NULL, " ", &save)) {
        if (n == cap)
            TEST_FAIL("LOCKD_TEST_VALGRIND has more than %zu words", cap);
        words[n++] = w;
    }
    return n;
}

/* argv with $LOCKD_TEST_VALGRIND's words in front, in one static array: for
 * a child to exec (built before the fork). */
static inline char **
test_wrapped(char *const *argv)
{
    static char buf[1024], *out[64];
    size_t n = test_wrapper(buf, sizeof(buf), out, 32), i;

    for (i = 0; argv[i]; i++) {
        if (n + i + 1 >= sizeof(out) / sizeof(out[0]))
            TEST_FAIL("too many arguments");
        out[n + i] = argv[i];
    }
    out[n + i] = NULL;
    return out;
}

/* Under check-valgrind, fail if the log at path holds a report of
 * valgrind's ("==PID== ..."): a helper that a test restarts or kills never
 * gets to exit 99 for it. */
static inline void
test_no_valgrind_report(const char *path)
{
    char line[512];
    FILE *f;
    int n;

    if (!getenv("LOCKD_TEST_VALGRIND") || !(f = fopen(path, "re")))
        return;
    while (fgets(line, sizeof(line), f))
        if ((n = 0, sscanf(line, "==%*u==%n", &n)) >= 0 && n > 0 && line[n] == ' ')
            TEST_FAIL("valgrind reported, in %s:\n%s", path, line);
    fclose(f);
}

/* Fork a child that runs fn(arg) and exits with its return value. */
static inline pid_t
test_fork(int (*fn)(void *), void *arg)
{
    pid_t pid = fork();

    if (pid < 0)
        TEST_FAIL("fork: %s", strerror(errno));
    if (pid == 0)
        _exit(fn(arg));
    return pid;
}

/* Wait for pid; returns its exit status, or 128 + signal. */
static inline int
test_wait(pid_t pid)
{
    int st;

    while (waitpid(pid, &st, 0) < 0)
        if (errno != EINTR)
            TEST_FAIL("waitpid(%d): %s", (int)pid, strerror(errno));
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static inline int
test_rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    remove(path);
    return 0;
}

static int test_failed, test_passed;

/* Run one case in a forked child inside a fresh scratch directory, with a
 * timeout of seconds; print its result line. */
static inline void
test_run(const char *name, void (*fn)(void), unsigned seconds)
{
    const char *tmp = getenv("TMPDIR");
    pid_t pid;
    int st;

    snprintf(test_scratch, sizeof(test_scratch), "%s/lockd-test.XXXXXX",
             tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(test_scratch)) {
        printf("not ok - %s (mkdtemp: %s)\n", name, strerror(errno));
        test_failed++;
        return;
    }
    fflush(stdout);
    pid = fork();
    if (pid == 0) {
        if (chdir(test_scratch) < 0)
            _exit(2);
        alarm(seconds);
        fn();
        fflush(NULL);
        _exit(0);
    }
    st = pid > 0 ? test_wait(pid) : 255;
    /* The case may have left children in its process group; they belong to
     * the case's pid only, so nothing else is signalled here. */
    nftw(test_scratch, test_rm_one, 16, FTW_DEPTH | FTW_PHYS | FTW_MOUNT);
    if (st == 0) {
        printf("ok - %s\n", name);
        test_passed++;
    } else {
        printf("not ok - %s (status %d%s)\n", name, st,
               st == 128 + SIGALRM ? ", timed out" : "");
        test_failed++;
    }
    fflush(stdout);
}

#define TEST_RUN(fn) test_run(#fn, fn, 120)
#define TEST_RUN_TIMEOUT(fn, sec) test_run(#fn, fn, sec)

/* Ends main(): the exit status says whether every case passed. */
static inline int
test_done(void)
{
    return test_failed ? 1 : 0;
}

#endif
