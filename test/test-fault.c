/* SPDX-License-Identifier: MIT */
/*
 * test-fault.c: includes lockd.c, to fail its system calls one at a time.
 *
 * lockd.c makes every system call that touches a lockspace through a
 * LOCKD_SYS_* macro.  This file defines each macro as a wrapper that counts
 * the calls and fails the k-th one with a chosen errno (the "plan").  For each
 * operation (acquire of a new lease, of an existing one, of three at once;
 * release; probe; gc; opening a fresh lockspace, which writes its settings)
 * the operation is first run unfaulted to count its N seam calls; then, for
 * each k in 0..N-1 and each errno in EINTR, ENOLCK, EMFILE, EROFS, it is run
 * again on a fresh lockspace with call k failing once, and we check:
 *   - the result is success or exactly -errno; for EINTR it is success (lockd
 *     retries EINTR), except at a close(), which is never retried (on Linux
 *     the fd is gone even when close() fails, close(2)) and whose failure is
 *     not reported as an error either;
 *   - no fd leaked (the set of fds in /proc/self/fd is unchanged) and no fd
 *     was closed twice;
 *   - nothing held changed: after a failed acquire every key it asked for is
 *     free (probed from a fresh handle, then taken); a bystander lease stays
 *     held; after a release the leases are free whatever it returned (lockd.h:
 *     it unlocks each fd, closes every fd and frees the lease in any case, and
 *     closing the last copy of an open file description drops its lock);
 *     gc never removes a held lease or a file that is not a lease;
 *   - a fresh lockspace's settings file is complete or absent, never
 *     truncated, and no temporary file is left beside it (unless the call
 *     failed is the unlinkat() that removes it, with an errno other than
 *     EINTR), and a later open completes the lockspace.
 * Each (operation, errno) pair is one case: the runs for each k are forked
 * one by one, so a failure lists every call k that went wrong, and each run's
 * own message says what.  Short writes of the settings file (every write cut
 * short; a short write then ENOSPC; a short write then a write of nothing)
 * are cases of their own.
 */
#include "test.h"
#include "util.h"

#include <dirent.h>
#include <stdarg.h>

#include "lockd.h"

/* ------------------------------------------------------------------------
 * The plan and the seam
 */

enum sys {
    SYS_OPENAT, SYS_FCNTL, SYS_FSTAT, SYS_FSTATAT, SYS_UNLINKAT, SYS_LINKAT,
    SYS_MKDIRAT, SYS_READ, SYS_WRITE, SYS_FSYNC, SYS_CLOSE,
};

static const char *const sys_names[] = {
    "openat", "fcntl", "fstat", "fstatat", "unlinkat", "linkat",
    "mkdirat", "read", "write", "fsync", "close",
};

/* What happens to writes once the first one came back short. */
enum after_short { AFTER_SHORT_MORE, AFTER_SHORT_ENOSPC, AFTER_SHORT_ZERO };

#define TRACE_MAX 1024

/* Set inside each case (each runs in its own forked child). */
static struct {
    int armed;           /* count (and maybe fail) seam calls */
    long calls;          /* seam calls seen while armed */
    long fail_at;        /* the call to fail, -1 for none */
    int err;             /* ... with this errno */
    int injected;        /* the fault happened */
    enum sys trace[TRACE_MAX]; /* which call each one was */
    int closed_fd;       /* the fd a failed close() released, -1 if none */
    int close_again;     /* that fd was closed again before being reused */
    int bad_close;       /* a close() found no such fd */
    size_t write_cap;    /* short writes: at most this many bytes; 0 off */
    enum after_short after_short;
    int writes;          /* writes seen while write_cap is set */
} plan = { .fail_at = -1, .closed_fd = -1 };

static void
plan_arm(long fail_at, int err)
{
    plan.armed = 1;
    plan.calls = 0;
    plan.fail_at = fail_at;
    plan.err = err;
    plan.injected = 0;
    plan.closed_fd = -1;
    plan.close_again = 0;
    plan.bad_close = 0;
    plan.writes = 0;
}

/* Stop counting; returns the number of seam calls made while armed. */
static long
plan_disarm(void)
{
    plan.armed = 0;
    plan.write_cap = 0;
    return plan.calls;
}

/* Count one call of kind s; 1 if it is the one to fail (errno is then set). */
static int
fault_hit(enum sys s)
{
    long k;

    if (!plan.armed)
        return 0;
    k = plan.calls++;
    if (k < TRACE_MAX)
        plan.trace[k] = s;
    if (k != plan.fail_at)
        return 0;
    plan.injected = 1;
    errno = plan.err;
    return 1;
}

/* A new fd with the number a failed close() released: closing it is fine. */
static void
fault_new_fd(int fd)
{
    if (plan.armed && fd >= 0 && fd == plan.closed_fd)
        plan.closed_fd = -1;
}

static int
fault_openat(int dirfd, const char *path, int flags, ...)
{
    mode_t mode = 0;
    int fd;

    if ((flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE) {
        va_list ap;

        va_start(ap, flags);
        mode = va_arg(ap, mode_t);
        va_end(ap);
    }
    if (fault_hit(SYS_OPENAT))
        return -1;
    fd = openat(dirfd, path, flags, mode);
    fault_new_fd(fd);
    return fd;
}

static int
fault_fcntl(int fd, int cmd, ...)
{
    va_list ap;
    int r;

    va_start(ap, cmd);
    if (fault_hit(SYS_FCNTL)) {
        va_end(ap);
        return -1;
    }
    switch (cmd) {
    case F_GETFD:
    case F_GETFL:
        r = fcntl(fd, cmd);
        break;
    case F_DUPFD:
    case F_DUPFD_CLOEXEC:
    case F_SETFD:
    case F_SETFL:
        r = fcntl(fd, cmd, va_arg(ap, int));
        if (cmd == F_DUPFD || cmd == F_DUPFD_CLOEXEC)
            fault_new_fd(r);
        break;
    default: /* the lock commands take a struct flock * */
        r = fcntl(fd, cmd, va_arg(ap, void *));
        break;
    }
    va_end(ap);
    return r;
}

static int
fault_fstat(int fd, struct stat *st)
{
    return fault_hit(SYS_FSTAT) ? -1 : fstat(fd, st);
}

static int
fault_fstatat(int dirfd, const char *path, struct stat *st, int flags)
{
    return fault_hit(SYS_FSTATAT) ? -1 : fstatat(dirfd, path, st, flags);
}

static int
fault_unlinkat(int dirfd, const char *path, int flags)
{
    return fault_hit(SYS_UNLINKAT) ? -1 : unlinkat(dirfd, path, flags);
}

static int
fault_linkat(int olddirfd, const char *oldpath, int newdirfd, const char *newpath, int flags)
{
    return fault_hit(SYS_LINKAT) ? -1 : linkat(olddirfd, oldpath, newdirfd, newpath, flags);
}

static int
fault_mkdirat(int dirfd, const char *path, mode_t mode)
{
    return fault_hit(SYS_MKDIRAT) ? -1 : mkdirat(dirfd, path, mode);
}

static ssize_t
fault_read(int fd, void *buf, size_t len)
{
    return fault_hit(SYS_READ) ? -1 : read(fd, buf, len);
}

/* With write_cap set, the first write is cut to write_cap bytes and later ones
 * do what after_short says: also come back short, fail, or write nothing. */
static ssize_t
fault_write(int fd, const void *buf, size_t len)
{
    if (fault_hit(SYS_WRITE))
        return -1;
    if (plan.armed && plan.write_cap > 0) {
        if (plan.writes++ > 0 && plan.after_short == AFTER_SHORT_ENOSPC) {
            errno = ENOSPC;
            return -1;
        }
        if (plan.writes > 1 && plan.after_short == AFTER_SHORT_ZERO)
            return 0;
        if (len > plan.write_cap)
            len = plan.write_cap;
    }
    return write(fd, buf, len);
}

static int
fault_fsync(int fd)
{
    return fault_hit(SYS_FSYNC) ? -1 : fsync(fd);
}

/* A failed close() still releases the fd, as Linux does (close(2)), so that a
 * caller retrying it would close a number it no longer owns: record that. */
static int
fault_close(int fd)
{
    int r;

    if (plan.armed && fd >= 0 && fd == plan.closed_fd)
        plan.close_again = 1;
    if (fault_hit(SYS_CLOSE)) {
        int e = errno;

        (void)close(fd);
        plan.closed_fd = fd;
        errno = e;
        return -1;
    }
    r = close(fd);
    if (r < 0 && errno == EBADF && plan.armed)
        plan.bad_close = 1;
    return r;
}

#define LOCKD_SYS_OPENAT   fault_openat
#define LOCKD_SYS_FCNTL    fault_fcntl
#define LOCKD_SYS_FSTAT    fault_fstat
#define LOCKD_SYS_FSTATAT  fault_fstatat
#define LOCKD_SYS_UNLINKAT fault_unlinkat
#define LOCKD_SYS_LINKAT   fault_linkat
#define LOCKD_SYS_MKDIRAT  fault_mkdirat
#define LOCKD_SYS_READ     fault_read
#define LOCKD_SYS_WRITE    fault_write
#define LOCKD_SYS_FSYNC    fault_fsync
#define LOCKD_SYS_CLOSE    fault_close

#include "../lockd.c"

/* ------------------------------------------------------------------------
 * Checks that say which faulted call they are about
 */

/* "acquire-new ENOLCK, call 3 of 14 (fcntl)", for failure messages. */
static char where[256];

#define EXPECT(cond, fmt, ...)                                                      \
    do {                                                                            \
        if (!(cond))                                                                \
            TEST_FAIL("%s: " fmt, where, ##__VA_ARGS__);                            \
    } while (0)

#define EXPECT_OK(expr)                                                             \
    do {                                                                            \
        long long _r = (long long)(expr);                                           \
        EXPECT(_r >= 0, "%s failed: %lld (%s)", #expr, _r, strerror((int)-_r));     \
    } while (0)

#define EXPECT_EQ(a, b)                                                             \
    do {                                                                            \
        long long _a = (long long)(a), _b = (long long)(b);                         \
        EXPECT(_a == _b, "%s == %s: %lld != %lld", #a, #b, _a, _b);                 \
    } while (0)

static const char *
errno_name(int e)
{
    switch (e) {
    case 0: return "none";
    case EINTR: return "EINTR";
    case ENOLCK: return "ENOLCK";
    case EMFILE: return "EMFILE";
    case EROFS: return "EROFS";
    case ENOSPC: return "ENOSPC";
    default: return strerrorname_np(e) ? strerrorname_np(e) : "?";
    }
}

/* ------------------------------------------------------------------------
 * File descriptors
 */

#define FDS_MAX 1024

struct fdset {
    int n;
    int fd[FDS_MAX];
};

/* The fds open in this process (without the one reading the directory). */
static void
fds_snapshot(struct fdset *s)
{
    DIR *d = opendir("/proc/self/fd");
    struct dirent *de;

    if (!d)
        TEST_FAIL("opendir /proc/self/fd: %s", strerror(errno));
    s->n = 0;
    while ((de = readdir(d))) {
        int fd = atoi(de->d_name);

        if (de->d_name[0] == '.' || fd == dirfd(d))
            continue;
        if (s->n == FDS_MAX)
            TEST_FAIL("more than %d fds open", FDS_MAX);
        s->fd[s->n++] = fd;
    }
    closedir(d);
}

static int
fds_has(const struct fdset *s, int fd)
{
    int i;

    for (i = 0; i < s->n; i++)
        if (s->fd[i] == fd)
            return 1;
    return 0;
}

/* The fds open now must be exactly those of before plus extra[0..nextra-1]
 * (what the operation handed out: a lease's fds, a lockspace's). */
static void
expect_fds(const struct fdset *before, const int *extra, int nextra)
{
    struct fdset now;
    char link[64], target[256];
    int i, j, known;
    ssize_t len;

    fds_snapshot(&now);
    for (i = 0; i < now.n; i++) {
        for (j = 0, known = fds_has(before, now.fd[i]); j < nextra; j++)
            known |= extra[j] == now.fd[i];
        if (known)
            continue;
        snprintf(link, sizeof(link), "/proc/self/fd/%d", now.fd[i]);
        len = readlink(link, target, sizeof(target) - 1);
        target[len < 0 ? 0 : len] = '\0';
        EXPECT(0, "fd %d leaked (%s)", now.fd[i], target);
    }
    for (i = 0; i < before->n; i++)
        EXPECT(fds_has(&now, before->fd[i]), "fd %d was closed behind its owner's back",
               before->fd[i]);
    for (j = 0; j < nextra; j++)
        EXPECT(fds_has(&now, extra[j]), "fd %d handed out is not open", extra[j]);
}

/* ------------------------------------------------------------------------
 * Fixtures
 */

#define KEYS_MAX 4

struct fix {
    char dir[4200];             /* the lockspace directory */
    lockd_space *space;
    lockd_lease *lease;         /* what the operation acts on or produces */
    lockd_lease *held;          /* held by the setup throughout (a bystander) */
    char held_key[LOCKD_KEY_SIZE];
    int held_mode;
    size_t nkeys;               /* the keys the operation acts on */
    char keys[KEYS_MAX][LOCKD_KEY_SIZE];
    int modes[KEYS_MAX];
    int probed[KEYS_MAX];       /* probe: what each key probed as */
    uint64_t removed, kept;     /* gc */
    struct fdset fds;           /* the fds before the operation */
    int fds_taken;              /* setup took fds already (release) */
};

/* A lockspace directory of its own for run number i. */
static void
fix_space(struct fix *f, long i)
{
    snprintf(f->dir, sizeof(f->dir), "%s/run%ld", test_scratch, i);
    ASSERT_OK(lockd_space_open(f->dir, LOCKD_OPEN_CREATE, &f->space));
}

/* Take (and keep) the lease of resource name, as a bystander. */
static void
fix_hold(struct fix *f, const char *name, int mode)
{
    const char *keys[] = { f->held_key };

    key_of(name, f->held_key);
    f->held_mode = mode;
    ASSERT_OK(lockd_acquire(f->space, 1, keys, &mode, LOCKD_TRY, &f->held));
}

/* Make the lease file of key exist, unheld. */
static void
fix_existing(struct fix *f, const char *key)
{
    const char *keys[] = { key };
    lockd_lease *l;

    ASSERT_OK(lockd_acquire(f->space, 1, keys, NULL, LOCKD_TRY, &l));
    ASSERT_OK(lockd_lease_release(l));
}

static void
fix_free(struct fix *f)
{
    lockd_lease_release(f->lease);
    lockd_lease_release(f->held);
    lockd_space_close(f->space);
    f->lease = f->held = NULL;
    f->space = NULL;
}

static lockd_space *
fresh_handle(const struct fix *f)
{
    lockd_space *s;

    EXPECT_OK(lockd_space_open(f->dir, 0, &s));
    return s;
}

/* key is free: it probes free from a fresh handle, and can be taken. */
static void
expect_free(const struct fix *f, const char *key)
{
    const char *keys[] = { key };
    lockd_space *s = fresh_handle(f);
    lockd_lease *l;

    EXPECT_EQ(lockd_probe(s, key, NULL), LOCKD_FREE);
    EXPECT_OK(lockd_acquire(s, 1, keys, NULL, LOCKD_TRY, &l));
    EXPECT_OK(lockd_lease_release(l));
    lockd_space_close(s);
}

/* key is held in mode: it probes so from a fresh handle, and an exclusive
 * try fails busy. */
static void
expect_held(const struct fix *f, const char *key, int mode)
{
    const char *keys[] = { key };
    lockd_space *s = fresh_handle(f);
    lockd_lease *l;

    EXPECT_EQ(lockd_probe(s, key, NULL), mode);
    EXPECT_EQ(lockd_acquire(s, 1, keys, NULL, LOCKD_TRY, &l), -EAGAIN);
    lockd_space_close(s);
}

static void
expect_bystander(const struct fix *f)
{
    if (f->held)
        expect_held(f, f->held_key, f->held_mode);
}

/* ------------------------------------------------------------------------
 * The operations
 */

struct op {
    const char *name;
    void (*setup)(struct fix *f, long i);
    int (*run)(struct fix *f);
    /* Check the state after run returned r (0 or -err); err is the errno
     * injected (0 for the counting run) and sys the call it hit. */
    void (*check)(struct fix *f, int r, int err, enum sys sys);
};

static int
run_acquire(struct fix *f)
{
    const char *keys[KEYS_MAX];
    size_t i;

    for (i = 0; i < f->nkeys; i++)
        keys[i] = f->keys[i];
    return lockd_acquire(f->space, f->nkeys, keys, f->modes, LOCKD_TRY, &f->lease);
}

/* After an acquire: all its keys held as asked, or all free; the bystander
 * is held either way. */
static void
check_acquire(struct fix *f, int r, int err, enum sys sys)
{
    size_t i;

    (void)err, (void)sys;
    expect_bystander(f);
    if (r < 0) {
        for (i = 0; i < f->nkeys; i++)
            expect_free(f, f->keys[i]);
        return;
    }
    EXPECT_EQ(lockd_lease_count(f->lease), f->nkeys);
    for (i = 0; i < f->nkeys; i++)
        expect_held(f, f->keys[i], f->modes[i]);
    EXPECT_OK(lockd_lease_release(f->lease));
    f->lease = NULL;
    for (i = 0; i < f->nkeys; i++)
        expect_free(f, f->keys[i]);
}

static void
setup_acquire_new(struct fix *f, long i)
{
    fix_space(f, i);
    fix_hold(f, "bystander", LOCKD_EXCLUSIVE);
    f->nkeys = 1;
    key_of("/images/new.qcow2", f->keys[0]);
    f->modes[0] = LOCKD_EXCLUSIVE;
}

static void
setup_acquire_existing(struct fix *f, long i)
{
    setup_acquire_new(f, i);
    fix_existing(f, f->keys[0]);
}

/* Three keys: one existing exclusive, two new (one shared). */
static void
setup_acquire_three(struct fix *f, long i)
{
    setup_acquire_existing(f, i);
    f->nkeys = 3;
    key_of("/images/second.qcow2", f->keys[1]);
    f->modes[1] = LOCKD_SHARED;
    key_of("/images/third.qcow2", f->keys[2]);
    f->modes[2] = LOCKD_EXCLUSIVE;
}

/* Two leases (one shared) to release; the fds to end with are those from
 * before they were taken. */
static void
setup_release(struct fix *f, long i)
{
    setup_acquire_three(f, i);
    f->nkeys = 2;
    fds_snapshot(&f->fds);
    f->fds_taken = 1;
    ASSERT_OK(run_acquire(f));
}

static int
run_release(struct fix *f)
{
    int r = lockd_lease_release(f->lease);

    f->lease = NULL;
    return r;
}

/* Whatever release returned, every fd is closed (the driver checks) and so
 * the leases are free: the last copy of each description is gone.  lockd.h
 * reports only unlock errors, so a failed close() must not surface. */
static void
check_release(struct fix *f, int r, int err, enum sys sys)
{
    size_t i;

    EXPECT(r == 0 || (sys == SYS_FCNTL && r == -err),
           "release returned %d (%s)", r, strerror(-r));
    expect_bystander(f);
    for (i = 0; i < f->nkeys; i++)
        expect_free(f, f->keys[i]);
}

/* Probe four keys: one held exclusive, one held shared, one existing and
 * free, one with no file at all. */
static void
setup_probe(struct fix *f, long i)
{
    const char *keys[2];
    int modes[] = { LOCKD_EXCLUSIVE, LOCKD_SHARED };

    fix_space(f, i);
    f->nkeys = 4;
    key_of("/images/exclusive.qcow2", f->keys[0]);
    key_of("/images/shared.qcow2", f->keys[1]);
    key_of("/images/free.qcow2", f->keys[2]);
    key_of("/images/missing.qcow2", f->keys[3]);
    f->modes[0] = LOCKD_EXCLUSIVE;
    f->modes[1] = LOCKD_SHARED;
    f->modes[2] = f->modes[3] = LOCKD_FREE;
    keys[0] = f->keys[0];
    keys[1] = f->keys[1];
    ASSERT_OK(lockd_acquire(f->space, 2, keys, modes, LOCKD_TRY, &f->lease));
    fix_existing(f, f->keys[2]);
}

static int
run_probe(struct fix *f)
{
    size_t i;

    for (i = 0; i < f->nkeys; i++) {
        f->probed[i] = lockd_probe(f->space, f->keys[i], NULL);
        if (f->probed[i] < 0)
            return f->probed[i];
    }
    return 0;
}

static void
check_probe(struct fix *f, int r, int err, enum sys sys)
{
    size_t i;

    (void)err, (void)sys;
    for (i = 0; r == 0 && i < f->nkeys; i++)
        EXPECT(f->probed[i] == f->modes[i], "key %zu probed %d, expected %d", i,
               f->probed[i], f->modes[i]);
    expect_held(f, f->keys[0], LOCKD_EXCLUSIVE);
    expect_held(f, f->keys[1], LOCKD_SHARED);
    expect_free(f, f->keys[2]);
    expect_free(f, f->keys[3]);
}

/* gc: three unheld lease files, one held, one file that is not a lease. */
#define GC_UNHELD 3

static void
setup_gc(struct fix *f, long i)
{
    static const char *const names[GC_UNHELD] = { "/a", "/b", "/c" };
    size_t j;
    int fd;

    fix_space(f, i);
    fix_hold(f, "/held", LOCKD_EXCLUSIVE);
    f->nkeys = GC_UNHELD;
    for (j = 0; j < GC_UNHELD; j++) {
        key_of(names[j], f->keys[j]);
        fix_existing(f, f->keys[j]);
    }
    fd = openat(lockd_space_fd(f->space), "not-a-lease", O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
    ASSERT_OK(fd);
    close(fd);
}

static int
run_gc(struct fix *f)
{
    return lockd_gc(f->space, NULL, NULL, &f->removed, &f->kept);
}

/* How many of the unheld lease files are still there. */
static int
gc_left(const struct fix *f)
{
    struct stat st;
    size_t j;
    int n = 0;

    for (j = 0; j < f->nkeys; j++)
        n += fstatat(lockd_space_fd(f->space), f->keys[j], &st, AT_SYMLINK_NOFOLLOW) == 0;
    return n;
}

/* The held lease's file is still the inode its fd locked, still held; the
 * file that is no lease is untouched; the unheld files gc did not get to are
 * removed by a later, unfaulted gc. */
static void
check_gc(struct fix *f, int r, int err, enum sys sys)
{
    int dfd = lockd_space_fd(f->space), left = gc_left(f);
    struct stat a, b;
    uint64_t removed = 0, kept = 0;
    lockd_space *s;

    (void)err, (void)sys;
    EXPECT_OK(fstat(lockd_lease_fd(f->held, 0), &a));
    EXPECT(fstatat(dfd, f->held_key, &b, AT_SYMLINK_NOFOLLOW) == 0 && a.st_ino == b.st_ino,
           "gc removed or replaced the held lease file");
    EXPECT(fstatat(dfd, "not-a-lease", &b, AT_SYMLINK_NOFOLLOW) == 0,
           "gc removed a file that is not a lease");
    expect_bystander(f);
    if (r == 0) {
        EXPECT(f->removed + f->kept == GC_UNHELD + 1 && f->kept >= 1,
               "gc counted %" PRIu64 " removed, %" PRIu64 " kept", f->removed, f->kept);
        EXPECT_EQ(left, GC_UNHELD - (int)f->removed);
    }
    s = fresh_handle(f);
    EXPECT_OK(lockd_gc(s, NULL, NULL, &removed, &kept));
    EXPECT_EQ(removed, left);
    EXPECT_EQ(kept, 1);
    lockd_space_close(s);
}

/* ------------------------------------------------------------------------
 * Opening a fresh lockspace
 */

#define SETTINGS_MAX 256

/* What an unfaulted open wrote: the settings file and the directory's
 * entries, which a faulted one may match or fall short of, nothing else. */
static struct {
    char text[SETTINGS_MAX];
    ssize_t len;
    char names[8][256];
    int nnames;
} ref = { .len = -1 };

/* Read a whole small file; -1 if it cannot be opened. */
static ssize_t
slurp(const char *path, char *buf, size_t size)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    ssize_t len = 0, n;

    if (fd < 0)
        return -1;
    while ((n = read(fd, buf + len, size - (size_t)len)) > 0)
        len += n;
    close(fd);
    return len;
}

static void
settings_path(const struct fix *f, char *buf, size_t size)
{
    snprintf(buf, size, "%s/" SETTINGS_NAME, f->dir);
}

/* Record the unfaulted run's directory as the reference. */
static void
ref_record(const struct fix *f)
{
    char path[4300];
    struct dirent *de;
    DIR *d = opendir(f->dir);

    ASSERT_TRUE(d);
    ref.nnames = 0;
    while ((de = readdir(d)))
        if (strcmp(de->d_name, ".") && strcmp(de->d_name, "..") && ref.nnames < 8)
            snprintf(ref.names[ref.nnames++], sizeof(ref.names[0]), "%s", de->d_name);
    closedir(d);
    settings_path(f, path, sizeof(path));
    ref.len = slurp(path, ref.text, sizeof(ref.text));
    ASSERT_TRUE(ref.len > 0);
}

/* The settings file is absent or byte for byte the reference, and nothing
 * else the reference did not have is in the directory.  A temporary file is
 * excused only when the fault hit the unlinkat() that removes it. */
static void
expect_settings_clean(const struct fix *f, int err, enum sys sys)
{
    char path[4300], text[SETTINGS_MAX], stray[256] = "";
    struct dirent *de;
    ssize_t len;
    DIR *d;
    int i, known;

    settings_path(f, path, sizeof(path));
    len = slurp(path, text, sizeof(text));
    EXPECT(len < 0 || (len == ref.len && memcmp(text, ref.text, (size_t)len) == 0),
           "%s is %zd bytes, not the %zd of a complete one", SETTINGS_NAME, len, ref.len);
    d = opendir(f->dir);
    if (!d)
        return; /* mkdir failed: nothing there at all */
    while ((de = readdir(d)) && !stray[0]) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
            continue;
        for (i = 0, known = 0; i < ref.nnames; i++)
            known |= !strcmp(de->d_name, ref.names[i]);
        if (!known)
            snprintf(stray, sizeof(stray), "%s", de->d_name);
    }
    closedir(d);
    EXPECT(!stray[0] || (sys == SYS_UNLINKAT && err != EINTR),
           "left %s behind in the lockspace", stray);
}

static void
setup_space_open(struct fix *f, long i)
{
    /* Two missing parents, so that mkdirat is faulted too. */
    snprintf(f->dir, sizeof(f->dir), "%s/run%ld/a/space", test_scratch, i);
}

static int
run_space_open(struct fix *f)
{
    return lockd_space_open(f->dir, LOCKD_OPEN_CREATE, &f->space);
}

/* Done or cleanly not done; either way a later open finds (or writes) the
 * complete settings. */
static void
check_space_open(struct fix *f, int r, int err, enum sys sys)
{
    lockd_space *s;

    if (ref.len < 0)
        ref_record(f); /* the first call is the unfaulted run's */
    expect_settings_clean(f, err, sys);
    if (r == 0) {
        EXPECT_EQ(lockd_space_mode(f->space), LOCKD_MODE_VERBATIM);
        EXPECT_EQ(lockd_space_recorded(f->space), 1);
    }
    EXPECT_OK(lockd_space_open(f->dir, LOCKD_OPEN_CREATE, &s));
    EXPECT_EQ(lockd_space_mode(s), LOCKD_MODE_VERBATIM);
    EXPECT_EQ(lockd_space_recorded(s), 1);
    lockd_space_close(s);
    expect_settings_clean(f, err, sys);
}

#define SPACE_OPEN_OP 6 /* ops[SPACE_OPEN_OP] opens a fresh lockspace */
static const struct op ops[] = {
    { "acquire-new", setup_acquire_new, run_acquire, check_acquire },
    { "acquire-existing", setup_acquire_existing, run_acquire, check_acquire },
    { "acquire-three", setup_acquire_three, run_acquire, check_acquire },
    { "release", setup_release, run_release, check_release },
    { "probe", setup_probe, run_probe, check_probe },
    { "gc", setup_gc, run_gc, check_gc },
    { "space-open", setup_space_open, run_space_open, check_space_open },
};

/* ------------------------------------------------------------------------
 * The sweep
 */

/* The case test_run() is about to run: set in the parent, read in the child. */
static const struct op *sweep_op;
static int sweep_err;

/* The fds an operation handed out: its lease's, or a new lockspace's. */
static int
handed_out(const struct fix *f, const struct op *op, int *fds)
{
    size_t i, n = lockd_lease_count(f->lease);

    if (op->run == run_space_open && f->space) {
        fds[0] = lockd_space_fd(f->space);
        return 1;
    }
    for (i = 0; i < n && i < KEYS_MAX; i++)
        fds[i] = lockd_lease_fd(f->lease, i);
    return (int)i;
}

/* What run returned, given the fault: success or exactly -err, and success
 * for EINTR, which lockd retries, except at close(), where it is no error. */
static void
expect_result(int r, long fail_at, int err, enum sys sys)
{
    if (fail_at < 0)
        EXPECT(r >= 0, "returned %d (%s) without a fault", r, strerror(-r));
    else if (err == EINTR && sys == SYS_CLOSE)
        EXPECT(r >= 0, "returned %d (%s): an interrupted close() freed the fd, which is "
               "no error", r, strerror(-r));
    else if (err == EINTR)
        EXPECT(r >= 0, "returned %d (%s): EINTR must be retried", r, strerror(-r));
    else
        EXPECT(r >= 0 || r == -err, "returned %d (%s), expected success or -%s", r,
               strerror(-r), errno_name(err));
}

/* Run op once on a fresh fixture (number i), failing call fail_at (-1: none)
 * with err, and check everything.  Returns what the operation returned; the
 * number of seam calls it made goes to *ret_calls. */
static int
run_once(const struct op *op, long i, long fail_at, int err, long *ret_calls)
{
    struct fix f = { 0 };
    int extra[KEYS_MAX] = { 0 }, nextra, r;
    enum sys sys;
    long calls;

    snprintf(where, sizeof(where), "%s %s, setup of call %ld", op->name, errno_name(err),
             fail_at);
    op->setup(&f, i);
    if (!f.fds_taken)
        fds_snapshot(&f.fds);
    plan_arm(fail_at, err);
    r = op->run(&f);
    calls = plan_disarm();
    sys = fail_at >= 0 && fail_at < TRACE_MAX ? plan.trace[fail_at] : SYS_OPENAT;
    if (fail_at < 0)
        snprintf(where, sizeof(where), "%s, unfaulted", op->name);
    else
        snprintf(where, sizeof(where), "%s %s at call %ld (%s)", op->name, errno_name(err),
                 fail_at, sys_names[sys]);
    EXPECT(fail_at < 0 || plan.injected, "the call to fail was never made");
    EXPECT(!plan.close_again, "a failed close() was retried on the same fd");
    EXPECT(!plan.bad_close, "close() of an fd that was not open");
    expect_result(r, fail_at, err, sys);
    nextra = r >= 0 ? handed_out(&f, op, extra) : 0;
    expect_fds(&f.fds, extra, nextra);
    op->check(&f, r < 0 ? r : 0, fail_at < 0 ? 0 : err, sys);
    fix_free(&f);
    *ret_calls = calls;
    return r;
}

/* One (operation, errno) case: count the calls, then fail each in turn, each
 * run in a child of its own so that one bad call does not hide the next.
 * The calls before a fault are the unfaulted run's, so the unfaulted trace
 * names the call each run failed. */
static void
sweep_case(void)
{
    char bad[1024] = "";
    long n, k, calls, nbad = 0, failed = 0;
    size_t len = 0;
    int st;

    run_once(sweep_op, 0, -1, 0, &n);
    ASSERT_TRUE(n > 0 && n <= TRACE_MAX);
    for (k = 0; k < n; k++) {
        pid_t pid = fork();

        ASSERT_TRUE(pid >= 0);
        if (pid == 0) {
            alarm(20); /* alarms are not inherited: a hung run must end too */
            _exit(run_once(sweep_op, k + 1, k, sweep_err, &calls) < 0 ? 3 : 0);
        }
        st = test_wait(pid);
        failed += st == 3;
        if (st == 0 || st == 3)
            continue;
        nbad++;
        if (len < sizeof(bad) - 64)
            len += (size_t)snprintf(bad + len, sizeof(bad) - len, " %ld (%s)", k,
                                    sys_names[plan.trace[k]]);
    }
    printf("# %s %s: each of %ld seam calls failed in turn: %ld runs failed cleanly, "
           "%ld recovered, %ld wrong\n", sweep_op->name, errno_name(sweep_err), n, failed,
           n - failed - nbad, nbad);
    if (nbad)
        TEST_FAIL("%s %s went wrong when failing call%s%s", sweep_op->name,
                  errno_name(sweep_err), nbad > 1 ? "s" : "", bad);
}

/* ------------------------------------------------------------------------
 * Short writes of the settings file
 */

/* Open a fresh lockspace with writes cut to cap bytes, later writes doing
 * what after says; want is what lockd_space_open() must return, or 1 for
 * any error. */
static void
short_write_case(size_t cap, enum after_short after, int want)
{
    struct fix f = { 0 };
    int extra[1], r, writes;
    long calls;

    run_once(&ops[SPACE_OPEN_OP], 0, -1, 0, &calls); /* records the reference */
    snprintf(where, sizeof(where), "space-open, writes cut to %zu bytes", cap);
    setup_space_open(&f, 1);
    fds_snapshot(&f.fds);
    plan_arm(-1, 0);
    plan.write_cap = cap;
    plan.after_short = after;
    r = run_space_open(&f);
    writes = plan.writes;
    plan_disarm();
    EXPECT(writes >= 2, "only %d write(s): the short write was not noticed", writes);
    EXPECT(r == want || (want == 1 && r < 0), "returned %d (%s), expected %s", r,
           strerror(-r), want == 1 ? "an error" : strerror(-want));
    extra[0] = r == 0 ? lockd_space_fd(f.space) : -1;
    expect_fds(&f.fds, extra, r == 0);
    check_space_open(&f, r, 0, SYS_WRITE);
    fix_free(&f);
}

/* Every write comes back short: lockd writes the rest, and the file is whole. */
static void
settings_short_writes_complete(void)
{
    short_write_case(3, AFTER_SHORT_MORE, 0);
}

/* A short write then ENOSPC: the open fails with it, and leaves neither a
 * truncated settings file nor its temporary file. */
static void
settings_short_write_then_enospc(void)
{
    short_write_case(5, AFTER_SHORT_ENOSPC, -ENOSPC);
}

/* A short write then a write of nothing: lockd must neither spin nor call it
 * done, and leaves nothing truncated. */
static void
settings_short_write_then_zero(void)
{
    short_write_case(5, AFTER_SHORT_ZERO, 1);
}

int
main(void)
{
    static const int errs[] = { EINTR, ENOLCK, EMFILE, EROFS };
    char name[128];
    size_t i, j;

    for (i = 0; i < sizeof(ops) / sizeof(ops[0]); i++)
        for (j = 0; j < sizeof(errs) / sizeof(errs[0]); j++) {
            sweep_op = &ops[i];
            sweep_err = errs[j];
            snprintf(name, sizeof(name), "fault %s %s", ops[i].name, errno_name(errs[j]));
            test_run(name, sweep_case, 60);
        }
    TEST_RUN(settings_short_writes_complete);
    TEST_RUN(settings_short_write_then_enospc);
    TEST_RUN(settings_short_write_then_zero);
    return test_done();
}
