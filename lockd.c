/* SPDX-License-Identifier: MIT */
/*
 * lockd.c: leases on disks, held as open-file-description locks.
 *
 * Why OFD locks, and never classic POSIX locks
 * ============================================
 * Classic fcntl() locks (F_SETLK) are broken by design for a lease that has
 * to outlive the code that took it.  They belong to the (process, inode) pair:
 * closing ANY descriptor of the file in that process drops every lock the
 * process holds on it, so a library that locks a disk's lease cannot stop some
 * other part of the program (a config reader, a backup thread) from silently
 * releasing it with an innocent open()+close().  They are not inherited by
 * fork() and do not travel with a descriptor passed over SCM_RIGHTS: the lock
 * stays with the process that took it and dies with it, so a manager cannot
 * hand a lease to a helper that survives the manager's crash.  And two threads
 * of one process, or two lockspace handles, never conflict, because the
 * process is the owner: libvirt's virtlockd grants one disk twice when a
 * lockspace is spelled two ways.
 *
 * Open file description locks (F_OFD_SETLK, Linux 3.15, fcntl(2)) fix all
 * three.  The owner is the open file description: the lock lives as long as
 * any descriptor of that description exists, in any process, and is released
 * by an explicit F_UNLCK through any of them or by closing the last one.  A
 * lease fd passed to lockd-helper keeps the lease after the manager is
 * SIGKILLed; closing an unrelated fd of the same file drops nothing; two
 * threads that each open the lease exclude each other.  OFD locks and POSIX
 * locks conflict with each other, so a lockd host and a virtlockd host on one
 * lockspace exclude each other byte for byte.
 *
 * Over NFS the client turns OFD locks into NLM or NFSv4 byte-range locks like
 * any other, so they span hosts, provided the mount does not make locks local
 * (nolock, local_lock=posix or all: `lockdctl doctor` warns).  A filesystem
 * that cannot lock at all answers ENOLCK; lockd passes that on and never falls
 * back to a weaker lock, because a lease that does not exclude is worse than
 * an error.
 *
 * The lockspace
 * =============
 * A lease is <dir>/<key>, zero bytes, locked on byte 0 length 1.  A lease file
 * is created only under a shared OFD lock on <dir>/.lockd-index and deleted
 * (by lockd_gc()) only under an exclusive one, after taking the lease's own
 * lock and checking that the name still refers to the locked inode.  Taking
 * an existing lease never touches the index.  After every grant the acquirer
 * checks that its name still refers to the inode it locked: gc, or a virtlockd
 * peer (which unlinks a lease file on its last release and knows nothing of
 * the index), may have unlinked it while we waited, and a lock on an unlinked
 * inode protects nothing.  So the fast path is open, fstat, lock, fstatat.
 */
#define _GNU_SOURCE
#include "lockd.h"

#include <assert.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include <sodium.h>

/*
 * The syscall seam: every system call that touches a lockspace goes through
 * one of these, so a test can define them before including this file and
 * inject EINTR, ENOLCK, EMFILE or EROFS at any call site (test/test-fault.c).
 */
#ifndef LOCKD_SYS_OPENAT
#define LOCKD_SYS_OPENAT openat
#endif
#ifndef LOCKD_SYS_FCNTL
#define LOCKD_SYS_FCNTL fcntl
#endif
#ifndef LOCKD_SYS_FSTAT
#define LOCKD_SYS_FSTAT fstat
#endif
#ifndef LOCKD_SYS_FSTATAT
#define LOCKD_SYS_FSTATAT fstatat
#endif
#ifndef LOCKD_SYS_UNLINKAT
#define LOCKD_SYS_UNLINKAT unlinkat
#endif
#ifndef LOCKD_SYS_LINKAT
#define LOCKD_SYS_LINKAT linkat
#endif
#ifndef LOCKD_SYS_MKDIRAT
#define LOCKD_SYS_MKDIRAT mkdirat
#endif
#ifndef LOCKD_SYS_READ
#define LOCKD_SYS_READ read
#endif
#ifndef LOCKD_SYS_WRITE
#define LOCKD_SYS_WRITE write
#endif
#ifndef LOCKD_SYS_FSYNC
#define LOCKD_SYS_FSYNC fsync
#endif
#ifndef LOCKD_SYS_CLOSE
#define LOCKD_SYS_CLOSE close
#endif

#define SETTINGS_NAME  ".lockd-lockspace"
#define INDEX_NAME     ".lockd-index"
#define SETTINGS_MAGIC "lockd-lockspace"
#define SETTINGS_VERSION 1
#define LEASE_OPEN_FLAGS (O_RDWR | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY)
#define BACKOFF_MAX_NS (20 * 1000 * 1000L)

struct lockd_space {
    int dirfd;
    int mode;     /* LOCKD_MODE_* */
    int recorded; /* mode read from, or written to, the settings file */
    char *dir;
};

struct lease_ent {
    char key[LOCKD_KEY_SIZE];
    int mode;
    int fd;
};

struct lockd_lease {
    size_t n;
    struct lease_ent ent[]; /* sorted by key */
};

LOCKD_API const char *
lockd_version(void)
{
    return LOCKD_VERSION_STRING;
}

/* ------------------------------------------------------------------------
 * Small things
 */

static int
negerrno(void)
{
    assert(errno > 0);
    return errno > 0 ? -errno : -EIO;
}

/* close() is never retried: on Linux the fd is gone even on EINTR. */
static void
safe_close(int fd)
{
    int saved = errno;

    if (fd >= 0)
        (void)LOCKD_SYS_CLOSE(fd);
    errno = saved;
}

static int
open_retry(int dirfd, const char *name, int flags, mode_t mode)
{
    int fd;

    do
        fd = LOCKD_SYS_OPENAT(dirfd, name, flags, mode);
    while (fd < 0 && errno == EINTR);
    return fd < 0 ? negerrno() : fd;
}

/* Set, test or clear the lease byte (byte 0, length 1) of fd's open file
 * description.  cmd is F_OFD_SETLK, F_OFD_SETLKW or F_OFD_GETLK; type F_RDLCK,
 * F_WRLCK or F_UNLCK.  EINTR is retried: lockd installs no signal handlers and
 * a caller's handler interrupting a wait should not turn into an error.  Busy
 * is -EAGAIN whatever the kernel said (fcntl(2): EACCES or EAGAIN). */
static int
lease_lock(int fd, int cmd, short type, struct flock *ret_fl)
{
    struct flock fl = {.l_type = type, .l_whence = SEEK_SET, .l_start = 0, .l_len = 1};
    int r;

    do
        r = LOCKD_SYS_FCNTL(fd, cmd, &fl);
    while (r < 0 && errno == EINTR);
    if (r < 0)
        return errno == EACCES ? -EAGAIN : negerrno();
    if (ret_fl)
        *ret_fl = fl;
    return 0;
}

static int
is_hex_lower(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
}

LOCKD_API int
lockd_key_valid(const char *key)
{
    size_t i;

    if (!key)
        return 0;
    for (i = 0; i < LOCKD_KEY_SIZE - 1; i++)
        if (!is_hex_lower(key[i]))
            return 0;
    return key[i] == '\0';
}

static void
sha256_hex(const void *buf, size_t len, char *ret_key)
{
    static const char hex[] = "0123456789abcdef";
    unsigned char h[crypto_hash_sha256_BYTES];
    size_t i;

    crypto_hash_sha256(h, buf, len);
    for (i = 0; i < sizeof(h); i++) {
        ret_key[2 * i] = hex[h[i] >> 4];
        ret_key[2 * i + 1] = hex[h[i] & 15];
    }
    ret_key[2 * sizeof(h)] = '\0';
}

LOCKD_API int
lockd_key_resource(const void *name, size_t len, char *ret_key)
{
    if (!name || !ret_key || len == 0)
        return -EINVAL;
    if (len > LOCKD_NAME_MAX)
        return -ENAMETOOLONG;
    if (memchr(name, '\0', len))
        return -EINVAL;
    sha256_hex(name, len, ret_key);
    return 0;
}

/* ------------------------------------------------------------------------
 * Lockspace settings
 *
 * .lockd-lockspace is a few lines of text:
 *     lockd-lockspace 1
 *     key-mode verbatim
 * A newer format version, or anything else we do not understand, is -EPROTO:
 * computing keys in a mode we are not sure of would silently lease the wrong
 * names.
 */

static const char *
mode_name(int mode)
{
    return mode == LOCKD_MODE_CANONICAL ? "canonical" : "verbatim";
}

static int
settings_parse(const char *buf, int *ret_mode)
{
    char mode[16];
    int version, n = 0;

    if (sscanf(buf, SETTINGS_MAGIC " %d\nkey-mode %15s\n%n", &version, mode, &n) != 2 ||
        n == 0 || buf[n] != '\0')
        return -EPROTO;
    if (version != SETTINGS_VERSION)
        return -EPROTO;
    if (strcmp(mode, "verbatim") == 0)
        *ret_mode = LOCKD_MODE_VERBATIM;
    else if (strcmp(mode, "canonical") == 0)
        *ret_mode = LOCKD_MODE_CANONICAL;
    else
        return -EPROTO;
    return 0;
}

/* Read the settings: 0 and *ret_mode, -ENOENT if there are none. */
static int
settings_read(int dirfd, int *ret_mode)
{
    char buf[128];
    size_t len = 0;
    ssize_t n;
    int fd, r;

    fd = open_retry(dirfd, SETTINGS_NAME, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK, 0);
    if (fd < 0)
        return fd;
    for (;;) {
        n = LOCKD_SYS_READ(fd, buf + len, sizeof(buf) - 1 - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        len += (size_t)n;
        if (len == sizeof(buf) - 1)
            break;
    }
    r = n < 0 ? negerrno() : 0;
    safe_close(fd);
    if (r < 0)
        return r == -EISDIR ? -EPROTO : r;
    buf[len] = '\0';
    return settings_parse(buf, ret_mode);
}

static int
write_all(int fd, const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = LOCKD_SYS_WRITE(fd, buf, len);

        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return negerrno();
        if (n == 0)
            return -EIO;
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

/*
 * Write the settings for mode, atomically and first-writer-wins: the text goes
 * to a uniquely named file beside it, which is then link(2)ed to the settings
 * name.  link() fails with EEXIST if another opener got there first, on NFS
 * too (unlike rename(), which would replace the winner).  Returns 0 if ours
 * was written, -EEXIST if another's was there.
 */
static int
settings_write(int dirfd, int mode)
{
    char tmp[64], text[64];
    unsigned char rnd[4];
    int fd, r, len;

    /* Unique among hosts sharing the directory, not just among our pids. */
    randombytes_buf(rnd, sizeof(rnd));
    snprintf(tmp, sizeof(tmp), SETTINGS_NAME ".%ld.%02x%02x%02x%02x", (long)getpid(), rnd[0],
             rnd[1], rnd[2], rnd[3]);
    len = snprintf(text, sizeof(text), SETTINGS_MAGIC " %d\nkey-mode %s\n", SETTINGS_VERSION,
                   mode_name(mode));
    fd = open_retry(dirfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (fd < 0)
        return fd;
    r = write_all(fd, text, (size_t)len);
    if (r == 0 && LOCKD_SYS_FSYNC(fd) < 0 && errno != EINVAL)
        r = negerrno();
    if (r == 0 && LOCKD_SYS_LINKAT(dirfd, tmp, dirfd, SETTINGS_NAME, 0) < 0)
        r = negerrno();
    safe_close(fd);
    (void)LOCKD_SYS_UNLINKAT(dirfd, tmp, 0);
    return r;
}

/*
 * Settle the lockspace's mode.  want is the mode asked for, explicit whether
 * the caller named it.  A writer that loses the link() race reads the
 * winner's mode, so two openers of a fresh lockspace always agree.
 */
static int
settings_settle(lockd_space *s, int want, int explicit, int readonly)
{
    int mode, r, tries;

    for (tries = 0; tries < 3; tries++) {
        r = settings_read(s->dirfd, &mode);
        if (r == 0) {
            if (explicit && mode != want)
                return -EMEDIUMTYPE;
            s->mode = mode;
            s->recorded = 1;
            return 0;
        }
        if (r != -ENOENT)
            return r;
        if (readonly) {
            s->mode = want;
            s->recorded = 0;
            return 0;
        }
        r = settings_write(s->dirfd, want);
        if (r == 0) {
            s->mode = want;
            s->recorded = 1;
            return 0;
        }
        if (r != -EEXIST)
            return r;
        /* Lost the race: loop and read the winner's settings. */
    }
    return -EPROTO;
}

/* ------------------------------------------------------------------------
 * Opening a lockspace
 */

static int
default_dir(char **ret)
{
    const char *env = secure_getenv("LOCKD_DIR"), *state, *home;
    char *p = NULL;
    int r;

    if (env && *env)
        p = strdup(env);
    else if (geteuid() == 0)
        p = strdup("/var/lib/lockd/files");
    else if ((state = secure_getenv("XDG_STATE_HOME")) && *state == '/')
        r = asprintf(&p, "%s/lockd/files", state), p = r < 0 ? NULL : p;
    else if ((home = secure_getenv("HOME")) && *home == '/')
        r = asprintf(&p, "%s/.local/state/lockd/files", home), p = r < 0 ? NULL : p;
    else
        return -ENOENT;
    if (!p)
        return -ENOMEM;
    *ret = p;
    return 0;
}

/* mkdir -p, each component created 0755 if missing. */
static int
mkdir_parents(const char *path)
{
    char buf[PATH_MAX];
    size_t i, len = strlen(path);

    if (len >= sizeof(buf))
        return -ENAMETOOLONG;
    memcpy(buf, path, len + 1);
    for (i = 1; i <= len; i++) {
        if (buf[i] != '/' && buf[i] != '\0')
            continue;
        buf[i] = '\0';
        if (LOCKD_SYS_MKDIRAT(AT_FDCWD, buf, 0755) < 0 && errno != EEXIST)
            return negerrno();
        buf[i] = path[i];
    }
    return 0;
}

static int
open_dir(const char *dir, int create)
{
    int fd = open_retry(AT_FDCWD, dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0);

    if (fd == -ENOENT && create) {
        int r = mkdir_parents(dir);

        if (r < 0)
            return r;
        fd = open_retry(AT_FDCWD, dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0);
    }
    return fd;
}

LOCKD_API int
lockd_space_open(const char *dir, uint32_t flags, lockd_space **ret_space)
{
    const uint32_t known = LOCKD_OPEN_CREATE | LOCKD_OPEN_VERBATIM | LOCKD_OPEN_CANONICAL |
                           LOCKD_OPEN_READONLY;
    lockd_space *s = NULL;
    char *path = NULL;
    int want, r;

    if (!ret_space || (flags & ~known) ||
        (flags & (LOCKD_OPEN_VERBATIM | LOCKD_OPEN_CANONICAL)) ==
            (LOCKD_OPEN_VERBATIM | LOCKD_OPEN_CANONICAL) ||
        (flags & (LOCKD_OPEN_CREATE | LOCKD_OPEN_READONLY)) ==
            (LOCKD_OPEN_CREATE | LOCKD_OPEN_READONLY))
        return -EINVAL;
    if (dir) {
        if (dir[0] != '/')
            return -EINVAL;
        if (strlen(dir) > LOCKD_NAME_MAX)
            return -ENAMETOOLONG;
        path = strdup(dir);
        r = path ? 0 : -ENOMEM;
    } else
        r = default_dir(&path);
    if (r < 0)
        goto out;
    s = calloc(1, sizeof(*s));
    if (!s) {
        r = -ENOMEM;
        goto out;
    }
    s->dir = path;
    path = NULL;
    s->dirfd = open_dir(s->dir, !!(flags & LOCKD_OPEN_CREATE));
    if (s->dirfd < 0) {
        r = s->dirfd;
        goto out;
    }
    want = (flags & LOCKD_OPEN_CANONICAL) ? LOCKD_MODE_CANONICAL : LOCKD_MODE_VERBATIM;
    r = settings_settle(s, want, !!(flags & (LOCKD_OPEN_VERBATIM | LOCKD_OPEN_CANONICAL)),
                        !!(flags & LOCKD_OPEN_READONLY));
    if (r < 0)
        goto out;
    *ret_space = s;
    s = NULL;
out:
    lockd_space_close(s);
    free(path);
    return r;
}

LOCKD_API void
lockd_space_close(lockd_space *space)
{
    if (!space)
        return;
    if (space->dirfd >= 0)
        safe_close(space->dirfd);
    free(space->dir);
    free(space);
}

LOCKD_API int
lockd_space_mode(const lockd_space *space)
{
    return space ? space->mode : -EINVAL;
}

LOCKD_API int
lockd_space_recorded(const lockd_space *space)
{
    return space ? space->recorded : -EINVAL;
}

LOCKD_API const char *
lockd_space_dir(const lockd_space *space)
{
    return space ? space->dir : NULL;
}

LOCKD_API int
lockd_space_fd(const lockd_space *space)
{
    return space ? space->dirfd : -EINVAL;
}

/* ------------------------------------------------------------------------
 * Disk keys
 */

/* realpath() of a path where nothing exists yet: the directory's realpath
 * plus the last component, which must be a real name. */
static int
canonical_missing(const char *path, char *buf, size_t size)
{
    const char *slash = strrchr(path, '/'), *base = slash + 1;
    char dir[PATH_MAX];
    size_t dlen = (size_t)(slash - path);

    if (*base == '\0' || strcmp(base, ".") == 0 || strcmp(base, "..") == 0)
        return -EINVAL;
    if (dlen == 0)
        dlen = 1; /* "/name": the directory is "/" */
    if (dlen >= sizeof(dir))
        return -ENAMETOOLONG;
    memcpy(dir, path, dlen);
    dir[dlen] = '\0';
    if (!realpath(dir, buf))
        return negerrno();
    if (strlen(buf) + 1 + strlen(base) >= size)
        return -ENAMETOOLONG;
    if (strcmp(buf, "/") != 0)
        strcat(buf, "/");
    strcat(buf, base);
    return 0;
}

static int
canonical_path(const char *path, char *buf, size_t size)
{
    struct stat st;

    assert(size >= PATH_MAX);
    if (realpath(path, buf))
        return 0;
    if (errno != ENOENT)
        return negerrno();
    /* ENOENT from realpath: either nothing is there (a new image, fine) or a
     * symlink dangles (an error: its target is what would be leased). */
    if (lstat(path, &st) == 0)
        return -ENOENT;
    if (errno != ENOENT)
        return negerrno();
    return canonical_missing(path, buf, size);
}

LOCKD_API int
lockd_space_key(const lockd_space *space, const char *path, char *ret_key)
{
    char buf[PATH_MAX];
    size_t len;
    int r;

    if (!space || !path || !ret_key || path[0] != '/')
        return -EINVAL;
    len = strlen(path);
    if (len > LOCKD_NAME_MAX)
        return -ENAMETOOLONG;
    if (space->mode == LOCKD_MODE_VERBATIM) {
        sha256_hex(path, len, ret_key);
        return 0;
    }
    r = canonical_path(path, buf, sizeof(buf));
    if (r < 0)
        return r;
    sha256_hex(buf, strlen(buf), ret_key);
    return 0;
}

/* ------------------------------------------------------------------------
 * Taking one lease
 */

/* Map a non-regular file planted where a lease belongs to its errno. */
static int
check_regular(const struct stat *st)
{
    if (S_ISREG(st->st_mode))
        return 0;
    if (S_ISDIR(st->st_mode))
        return -EISDIR;
    if (S_ISLNK(st->st_mode))
        return -ELOOP;
    return -ENXIO;
}

/* Open an existing lease file; -ENOENT if there is none.  O_NOFOLLOW makes a
 * planted symlink fail with ELOOP, O_NONBLOCK keeps a planted FIFO from
 * blocking the open, and O_RDWR fails on a directory with EISDIR. */
static int
lease_open(int dirfd, const char *key, struct stat *ret_st)
{
    int fd = open_retry(dirfd, key, LEASE_OPEN_FLAGS, 0), r;

    if (fd < 0)
        return fd;
    if (LOCKD_SYS_FSTAT(fd, ret_st) < 0)
        r = negerrno();
    else
        r = check_regular(ret_st);
    if (r < 0) {
        safe_close(fd);
        return r;
    }
    return fd;
}

/* The index lock: shared to create lease files, exclusive to delete them.
 * Opened afresh for every use, because an OFD lock belongs to the open file
 * description: sharing one between threads would let one thread's unlock drop
 * another's lock.  Released by closing the returned fd. */
static int
index_lock(int dirfd, short type)
{
    struct stat st;
    int fd, r;

    fd = open_retry(dirfd, INDEX_NAME, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK,
                    0600);
    if (fd < 0)
        return fd;
    if (LOCKD_SYS_FSTAT(fd, &st) < 0)
        r = negerrno();
    else
        r = check_regular(&st);
    if (r == 0)
        r = lease_lock(fd, F_OFD_SETLKW, type, NULL);
    if (r < 0) {
        safe_close(fd);
        return r;
    }
    return fd;
}

/* Create a lease file under the shared index lock, so that gc (which deletes
 * under the exclusive one) never removes a file between our create and our
 * lock.  The file may already exist by now: O_CREAT without O_EXCL opens it. */
static int
lease_create(int dirfd, const char *key, struct stat *ret_st)
{
    int ifd, fd, r = 0;

    ifd = index_lock(dirfd, F_RDLCK);
    if (ifd < 0)
        return ifd;
    fd = open_retry(dirfd, key, LEASE_OPEN_FLAGS | O_CREAT, 0600);
    if (fd >= 0 && LOCKD_SYS_FSTAT(fd, ret_st) < 0)
        r = negerrno();
    else if (fd >= 0)
        r = check_regular(ret_st);
    safe_close(ifd);
    if (r < 0) {
        safe_close(fd);
        return r;
    }
    return fd;
}

/* Whether key in dirfd still names the inode st describes.  -ENOENT and a
 * different inode both mean "stale": the caller starts over. */
static int
lease_current(int dirfd, const char *key, const struct stat *st)
{
    struct stat now;

    if (LOCKD_SYS_FSTATAT(dirfd, key, &now, AT_SYMLINK_NOFOLLOW) < 0)
        return errno == ENOENT ? 0 : negerrno();
    return now.st_dev == st->st_dev && now.st_ino == st->st_ino;
}

/* Deadlines are CLOCK_MONOTONIC times in ns, immune to clock changes. */
static int64_t
now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void
sleep_ns(int64_t ns)
{
    struct timespec ts = {.tv_sec = ns / 1000000000, .tv_nsec = ns % 1000000000};

    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

/*
 * Lock one opened lease file.  deadline is 0 to try once, -1 to wait in the
 * kernel, else a CLOCK_MONOTONIC time in ns: a timed wait polls F_OFD_SETLK
 * with a backoff doubling from 1 ms to 20 ms, because the kernel offers no
 * timed lock and lockd will not use signals or threads to make one.
 */
static int
lease_lock_wait(int fd, short type, int64_t deadline)
{
    int64_t backoff = 1000000, left;
    int r;

    if (deadline < 0)
        return lease_lock(fd, F_OFD_SETLKW, type, NULL);
    for (;;) {
        r = lease_lock(fd, F_OFD_SETLK, type, NULL);
        if (r != -EAGAIN || deadline == 0)
            return r;
        left = deadline - now_ns();
        if (left <= 0)
            return -ETIMEDOUT;
        sleep_ns(backoff < left ? backoff : left);
        if (backoff < BACKOFF_MAX_NS)
            backoff = backoff * 2 < BACKOFF_MAX_NS ? backoff * 2 : BACKOFF_MAX_NS;
    }
}

/* Unlock then close: a close alone frees nothing while another copy of the
 * open file description exists (the helper, a child). */
static int
lease_drop(int fd)
{
    int r = lease_lock(fd, F_OFD_SETLK, F_UNLCK, NULL);

    safe_close(fd);
    return r;
}

/* Take one lease: returns its locked fd, or -errno with nothing held. */
static int
lease_take(int dirfd, const char *key, int mode, int64_t deadline)
{
    short type = mode == LOCKD_SHARED ? F_RDLCK : F_WRLCK;
    struct stat st;
    int fd, r;

    for (;;) {
        fd = lease_open(dirfd, key, &st);
        if (fd == -ENOENT)
            fd = lease_create(dirfd, key, &st);
        if (fd < 0)
            return fd;
        r = lease_lock_wait(fd, type, deadline);
        if (r == 0)
            r = lease_current(dirfd, key, &st);
        if (r == 1)
            return fd;
        /* Not granted (r < 0), or granted on an inode that gc or a
         * virtlockd peer unlinked meanwhile (r == 0): let go and, in the
         * latter case, start over on whatever the name refers to now. */
        (void)lease_drop(fd);
        if (r < 0)
            return r;
    }
}

/* ------------------------------------------------------------------------
 * Leases: the public calls
 */

static int
ent_cmp(const void *a, const void *b)
{
    return strcmp(((const struct lease_ent *)a)->key, ((const struct lease_ent *)b)->key);
}

/* Copy, check, sort and merge the request into a new lease (fds all -1). */
static int
lease_plan(size_t n, const char *const *keys, const int *modes, lockd_lease **ret)
{
    lockd_lease *l;
    size_t i, j;

    l = calloc(1, sizeof(*l) + n * sizeof(l->ent[0]));
    if (!l)
        return -ENOMEM;
    for (i = 0; i < n; i++) {
        int m = modes ? modes[i] : LOCKD_EXCLUSIVE;

        if (!lockd_key_valid(keys[i]) || (m != LOCKD_EXCLUSIVE && m != LOCKD_SHARED)) {
            free(l);
            return -EINVAL;
        }
        memcpy(l->ent[i].key, keys[i], LOCKD_KEY_SIZE);
        l->ent[i].mode = m;
        l->ent[i].fd = -1;
    }
    qsort(l->ent, n, sizeof(l->ent[0]), ent_cmp);
    for (i = 0, j = 0; i < n; i++) {
        if (j > 0 && strcmp(l->ent[j - 1].key, l->ent[i].key) == 0) {
            if (l->ent[i].mode == LOCKD_EXCLUSIVE)
                l->ent[j - 1].mode = LOCKD_EXCLUSIVE;
            continue;
        }
        l->ent[j++] = l->ent[i];
    }
    l->n = j;
    *ret = l;
    return 0;
}

LOCKD_API int
lockd_acquire(lockd_space *space, size_t n, const char *const *keys, const int *modes,
              int timeout_ms, lockd_lease **ret_lease)
{
    lockd_lease *l = NULL;
    int64_t deadline;
    size_t i;
    int r;

    if (!space || !keys || !ret_lease || n == 0 || n > LOCKD_ACQUIRE_MAX || timeout_ms < -1)
        return -EINVAL;
    r = lease_plan(n, keys, modes, &l);
    if (r < 0)
        return r;
    deadline = timeout_ms == LOCKD_FOREVER ? -1
               : timeout_ms == LOCKD_TRY   ? 0
                                           : now_ns() + (int64_t)timeout_ms * 1000000;
    /* In sorted order: OFD locks have no deadlock detection, and two callers
     * taking overlapping sets in one order can never wait on each other. */
    for (i = 0; i < l->n; i++) {
        r = lease_take(space->dirfd, l->ent[i].key, l->ent[i].mode, deadline);
        if (r < 0)
            break;
        l->ent[i].fd = r;
    }
    if (i < l->n) {
        (void)lockd_lease_release(l);
        return r;
    }
    *ret_lease = l;
    return 0;
}

LOCKD_API int
lockd_lease_release(lockd_lease *lease)
{
    size_t i;
    int r = 0, q;

    if (!lease)
        return 0;
    for (i = 0; i < lease->n; i++) {
        if (lease->ent[i].fd < 0)
            continue;
        q = lease_drop(lease->ent[i].fd);
        if (q < 0 && r == 0)
            r = q;
    }
    free(lease);
    return r;
}

LOCKD_API void
lockd_lease_forget(lockd_lease *lease)
{
    size_t i;

    if (!lease)
        return;
    for (i = 0; i < lease->n; i++)
        safe_close(lease->ent[i].fd);
    free(lease);
}

LOCKD_API size_t
lockd_lease_count(const lockd_lease *lease)
{
    return lease ? lease->n : 0;
}

LOCKD_API const char *
lockd_lease_key(const lockd_lease *lease, size_t i)
{
    return lease && i < lease->n ? lease->ent[i].key : NULL;
}

LOCKD_API int
lockd_lease_mode(const lockd_lease *lease, size_t i)
{
    return lease && i < lease->n ? lease->ent[i].mode : -EINVAL;
}

LOCKD_API int
lockd_lease_fd(const lockd_lease *lease, size_t i)
{
    return lease && i < lease->n ? lease->ent[i].fd : -EINVAL;
}

/*
 * F_OFD_GETLK asks "could this description take a write lock?" and names a
 * conflicting lock if not.  Our own fresh description conflicts with every
 * other, including other descriptions in this process, so leases held by
 * this process are reported like anyone's.  The description needs write
 * access for F_WRLCK to be meaningful, but a read-only lockspace still lets us
 * open O_RDONLY: F_GETLK checks no access mode.
 */
LOCKD_API int
lockd_probe(const lockd_space *space, const char *key, int32_t *ret_pid)
{
    struct flock fl;
    struct stat st;
    int fd, r;

    if (!space || !lockd_key_valid(key))
        return -EINVAL;
    fd = open_retry(space->dirfd, key, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY,
                    0);
    if (fd == -ENOENT) {
        if (ret_pid)
            *ret_pid = 0;
        return LOCKD_FREE;
    }
    if (fd < 0)
        return fd;
    if (LOCKD_SYS_FSTAT(fd, &st) < 0)
        r = negerrno();
    else
        r = check_regular(&st);
    if (r == 0)
        r = lease_lock(fd, F_OFD_GETLK, F_WRLCK, &fl);
    safe_close(fd);
    if (r < 0)
        return r;
    if (ret_pid)
        *ret_pid = fl.l_type == F_UNLCK || fl.l_pid < 0 ? 0 : fl.l_pid;
    return fl.l_type == F_UNLCK ? LOCKD_FREE : fl.l_type == F_RDLCK ? LOCKD_SHARED
                                                                      : LOCKD_EXCLUSIVE;
}

/* ------------------------------------------------------------------------
 * Garbage collection
 */

/* Remove the lease file key if nobody holds it and its name still refers to
 * the inode we locked.  Returns 1 removed, 0 held (or gone), -errno. */
static int
gc_one(int dirfd, const char *key)
{
    struct stat st;
    int fd, r;

    fd = lease_open(dirfd, key, &st);
    if (fd == -ENOENT)
        return 0;
    if (fd < 0)
        return fd == -ELOOP || fd == -EISDIR || fd == -ENXIO ? 0 : fd;
    r = lease_lock(fd, F_OFD_SETLK, F_WRLCK, NULL);
    if (r == -EAGAIN) {
        safe_close(fd);
        return 0;
    }
    if (r == 0)
        r = lease_current(dirfd, key, &st);
    /* Creators wait for our exclusive index lock, so the name cannot be
     * re-linked to a new inode between this check and the unlink. */
    if (r == 1 && LOCKD_SYS_UNLINKAT(dirfd, key, 0) < 0)
        r = errno == ENOENT ? 0 : negerrno();
    (void)lease_drop(fd);
    return r;
}

LOCKD_API int
lockd_gc(lockd_space *space, lockd_progress_fn progress, void *userdata,
         uint64_t *ret_removed, uint64_t *ret_kept)
{
    uint64_t seen = 0, removed = 0, kept = 0;
    struct dirent *de;
    DIR *d = NULL;
    int ifd = -1, lfd, r = 0;

    if (!space)
        return -EINVAL;
    ifd = index_lock(space->dirfd, F_WRLCK);
    if (ifd < 0)
        return ifd;
    lfd = open_retry(space->dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0);
    if (lfd < 0) {
        r = lfd;
        goto out;
    }
    d = fdopendir(lfd);
    if (!d) {
        r = negerrno();
        safe_close(lfd);
        goto out;
    }
    while ((errno = 0, de = readdir(d))) {
        if (!lockd_key_valid(de->d_name))
            continue;
        r = gc_one(space->dirfd, de->d_name);
        if (r < 0)
            goto out;
        if (r == 1)
            removed++;
        else
            kept++;
        if (++seen % 1024 == 0 && progress && (r = progress(seen, userdata)) != 0)
            goto out;
    }
    r = errno ? negerrno() : 0;
    if (r == 0) {
        if (ret_removed)
            *ret_removed = removed;
        if (ret_kept)
            *ret_kept = kept;
    }
out:
    if (d)
        closedir(d);
    safe_close(ifd);
    return r;
}
