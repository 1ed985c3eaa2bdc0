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
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <sys/un.h>
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
#ifndef LOCKD_SYS_SOCKET
#define LOCKD_SYS_SOCKET socket
#endif
#ifndef LOCKD_SYS_CONNECT
#define LOCKD_SYS_CONNECT connect
#endif
#ifndef LOCKD_SYS_SENDMSG
#define LOCKD_SYS_SENDMSG sendmsg
#endif
#ifndef LOCKD_SYS_RECVMSG
#define LOCKD_SYS_RECVMSG recvmsg
#endif

#define SETTINGS_NAME  ".lockd-lockspace"
#define INDEX_NAME     ".lockd-index"
#define SETTINGS_MAGIC "lockd-lockspace"
#define SETTINGS_VERSION 1
#define LEASE_OPEN_FLAGS (O_RDWR | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY)
#define PEEK_OPEN_FLAGS (O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY)
#define BACKOFF_MAX_NS (20 * 1000 * 1000L)
#define INDEX_BYTE 0 /* of .lockd-index: shared to create leases, exclusive for gc */
#define INTENT_BYTE 1 /* shared: a creator waits for or holds INDEX_BYTE */
#define GC_BYTE 2 /* exclusive: the one gc running in this lockspace */
#define INDEX_BACKOFF_MAX_NS (2 * 1000 * 1000L) /* a gc batch is short */
#define GC_BATCH_NS (10 * 1000 * 1000L) /* gc holds the index this long at most, */
#define GC_BATCH_MAX 256                /* or for this many files */
#define STALE_RETRIES_MAX 1000

/* Run a syscall again while a signal interrupts it (an NFS lockspace can
 * make nearly any of them sleep).  Never used for close(). */
#define RETRY_EINTR(call)                                                           \
    ({                                                                              \
        int _r;                                                                     \
        do                                                                          \
            _r = (int)(call);                                                       \
        while (_r < 0 && errno == EINTR);                                           \
        _r;                                                                         \
    })

struct lockd_space {
    int dirfd;
    int mode;     /* LOCKD_MODE_* */
    int recorded; /* mode read from, or written to, the settings file */
    int readonly; /* LOCKD_OPEN_READONLY: no lease is taken or removed */
    char *dir;
    /* The handle's and each lease's (atomic): the last one out closes. */
    unsigned refs;
    /* The directory's identity, taken at open, for conn_bind(); has_id 0
     * if the kernel gave none. */
    int has_id;
    uint64_t dev, ino, mnt;
    /* Not a filesystem known to be local: lease_current() asks the file
     * itself, past the client's caches. */
    int remote;
};

struct lease_ent {
    char key[LOCKD_BLOCK_KEY_SIZE]; /* a lockspace's key; in an lvm or scsi one, a name */
    int mode;
    int fd;
    char *path;     /* a direct lease's disk (lockd_acquire_direct()); else NULL */
    uint32_t given; /* lease_plan(): where the key stood in the caller's keys[] */
    /* Its holder record (exclusive only): holder_write(). */
    uint64_t epoch, gen;
    int64_t since;
    size_t len;
};

struct lockd_lease {
    lockd_space *space; /* a reference: lockd_conn_handoff() binds its directory;
                         * NULL for direct leases */
    int direct;         /* lockd_acquire_direct()'s: on the disks themselves */
    size_t n;         /* distinct keys, in ent[] */
    size_t given;     /* keys the caller gave lockd_acquire(), duplicates too */
    uint32_t *slot;   /* slot[i]: the ent[] index of the caller's keys[i] */
    struct lease_ent ent[]; /* sorted by key; slot[] follows the last one */
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

/* Set, test or clear byte `byte` (length 1) of fd's open file description.
 * cmd is F_OFD_SETLK, F_OFD_SETLKW or F_OFD_GETLK; type F_RDLCK, F_WRLCK or
 * F_UNLCK.  EINTR is retried: lockd installs no signal handlers and a
 * caller's handler interrupting a wait should not turn into an error.  Busy
 * is -EAGAIN whatever the kernel said (fcntl(2): EACCES or EAGAIN). */
static int
byte_lock(int fd, int cmd, short type, off_t byte, struct flock *ret_fl)
{
    struct flock fl = {.l_type = type, .l_whence = SEEK_SET, .l_start = byte, .l_len = 1};
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

/* The lease byte: byte 0, length 1, what virtlockd locks too. */
static int
lease_lock(int fd, int cmd, short type, struct flock *ret_fl)
{
    return byte_lock(fd, cmd, type, 0, ret_fl);
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

/*
 * Whether name may name a lease file in an lvm or scsi lockspace: what
 * lvs and scsi_id print (LVM: [0-9A-Za-z-], SCSI: [0-9A-Za-z#+-.:=@_],
 * \x escapes and UTF-8) passes; so does any 1 to 255 bytes without a '/'
 * or a control byte that does not start with '.' (lockd's own files, "."
 * and "..").
 */
static int
name_key_valid(const char *name)
{
    size_t i;

    if (!name || !name[0] || name[0] == '.')
        return 0;
    for (i = 0; name[i]; i++)
        if (name[i] == '/' || (unsigned char)name[i] < 0x20 || name[i] == 0x7f ||
            i >= LOCKD_BLOCK_KEY_SIZE - 1)
            return 0;
    return 1;
}

/* 32 bytes (a SHA-256, or a key on the wire) as 64 lowercase hex digits. */
static void
key_to_hex(const uint8_t *bytes, char *ret_hex)
{
    static const char hex[] = "0123456789abcdef";
    size_t i;

    for (i = 0; i < crypto_hash_sha256_BYTES; i++) {
        ret_hex[2 * i] = hex[bytes[i] >> 4];
        ret_hex[2 * i + 1] = hex[bytes[i] & 15];
    }
    ret_hex[2 * crypto_hash_sha256_BYTES] = '\0';
}

static void
sha256_hex(const void *buf, size_t len, char *ret_key)
{
    unsigned char h[crypto_hash_sha256_BYTES];

    crypto_hash_sha256(h, buf, len);
    key_to_hex(h, ret_key);
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
 * .lockd-lockspace is two lines of text, each ending in a newline:
 *     lockd-lockspace 1
 *     key-mode verbatim
 * A newer format version, or anything else we do not understand, is -EPROTO:
 * computing keys in a mode we are not sure of would silently lease the wrong
 * names.
 */

static const char *
mode_name(int mode)
{
    static const char *const names[] = {"verbatim", "canonical", "lvm", "scsi"};

    return mode >= 0 && mode <= LOCKD_MODE_SCSI ? names[mode] : "verbatim";
}

/* Whether a lockspace of mode names its lease files after devices (LVM LV
 * UUIDs, SCSI ids: virtlockd's lvm_lockspace_dir and scsi_lockspace_dir),
 * used raw, rather than by a SHA-256 key. */
static int
mode_named(int mode)
{
    return mode == LOCKD_MODE_LVM || mode == LOCKD_MODE_SCSI;
}

/* Whether key names a lease in space: a SHA-256 key, or in an lvm or scsi
 * lockspace a device's name. */
static int
space_key_valid(const lockd_space *space, const char *key)
{
    return mode_named(space->mode) ? name_key_valid(key) : lockd_key_valid(key);
}

/* The settings text for mode, as written and as the only text read. */
static int
settings_text(int mode, char *buf, size_t size)
{
    return snprintf(buf, size, SETTINGS_MAGIC " %d\nkey-mode %s\n", SETTINGS_VERSION,
                    mode_name(mode));
}

/* Strict: the file must be, byte for byte, what settings_write() writes for
 * one of the modes.  A file run together ("lockd-lockspace1key-modecanonical"),
 * without its last newline, with a line added, repeated or reordered, is
 * hand-made or torn, and guessing what it meant could give keys in the wrong
 * mode. */
static int
settings_parse(const char *buf, size_t len, int *ret_mode)
{
    char text[64];
    int mode, n;

    for (mode = LOCKD_MODE_VERBATIM; mode <= LOCKD_MODE_SCSI; mode++) {
        n = settings_text(mode, text, sizeof(text));
        if ((size_t)n == len && memcmp(buf, text, len) == 0) {
            *ret_mode = mode;
            return 0;
        }
    }
    return -EPROTO;
}

static int open_looked(int dirfd, const char *name, int flags, int blk_ok,
                       struct stat *ret_st);

/* Read the settings: 0 and *ret_mode, -ENOENT if there are none. */
static int
settings_read(int dirfd, int *ret_mode)
{
    char buf[128];
    struct stat st;
    size_t len = 0;
    ssize_t n;
    int fd, r;

    fd = open_looked(dirfd, SETTINGS_NAME, PEEK_OPEN_FLAGS, 0, &st);
    if (fd < 0)
        return fd == -EISDIR ? -EPROTO : fd;
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
    return settings_parse(buf, len, ret_mode);
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
    len = settings_text(mode, text, sizeof(text));
    fd = open_retry(dirfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (fd < 0)
        return fd;
    r = write_all(fd, text, (size_t)len);
    if (r == 0 && RETRY_EINTR(LOCKD_SYS_FSYNC(fd)) < 0 && errno != EINVAL)
        r = negerrno();
    if (r == 0 && RETRY_EINTR(LOCKD_SYS_LINKAT(dirfd, tmp, dirfd, SETTINGS_NAME, 0)) < 0)
        r = negerrno();
    safe_close(fd);
    (void)RETRY_EINTR(LOCKD_SYS_UNLINKAT(dirfd, tmp, 0));
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

/* Read a path from the environment variable name: NULL when unset or empty;
 * a relative path is refused (-EINVAL), since what it names would change
 * with the caller's working directory.  secure_getenv(): a setuid caller
 * never takes a lockspace or a socket from its invoker's environment. */
static int
env_path(const char *name, const char **ret)
{
    const char *v = secure_getenv(name);

    *ret = NULL;
    if (!v || !*v)
        return 0;
    if (v[0] != '/')
        return -EINVAL;
    if (strlen(v) > LOCKD_NAME_MAX)
        return -ENAMETOOLONG;
    *ret = v;
    return 0;
}

/* *ret = strdup(prefix + suffix), or -ENOMEM. */
static int
dup_join(const char *prefix, const char *suffix, char **ret)
{
    char *p;

    if (asprintf(&p, "%s%s", prefix, suffix) < 0)
        return -ENOMEM;
    *ret = p;
    return 0;
}

/* The default for one of lockd's paths: $var if set, else for_root when
 * running as root, else the first (variable, suffix) pair of user[] (NULL
 * terminated) whose variable holds an absolute path, joined. */
static int
default_path(const char *var, const char *for_root, const char *const *user, char **ret)
{
    const char *v;
    int r;

    if (!ret)
        return -EINVAL;
    r = env_path(var, &v);
    if (r < 0 || v)
        return r < 0 ? r : dup_join(v, "", ret);
    if (geteuid() == 0)
        return dup_join(for_root, "", ret);
    for (; user[0]; user += 2)
        if (env_path(user[0], &v) == 0 && v)
            return dup_join(v, user[1], ret);
    return -ENOENT;
}

LOCKD_API int
lockd_default_dir(char **ret_dir)
{
    static const char *const user[] = {
        "XDG_STATE_HOME", "/lockd/files", "HOME", "/.local/state/lockd/files", NULL};

    return default_path("LOCKD_DIR", "/var/lib/lockd/files", user, ret_dir);
}

LOCKD_API int
lockd_default_socket(char **ret_path)
{
    static const char *const user[] = {"XDG_RUNTIME_DIR", "/lockd/helper.sock", NULL};

    return default_path("LOCKD_SOCKET", "/run/lockd/helper.sock", user, ret_path);
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
        if (RETRY_EINTR(LOCKD_SYS_MKDIRAT(AT_FDCWD, buf, 0755)) < 0 && errno != EEXIST)
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

/* Whether fs_type (statfs(2)'s f_type) is a filesystem of this machine
 * only, whose lookups cannot be stale: ext2/3/4, xfs, btrfs, tmpfs, f2fs. */
static int
fs_is_local(long fs_type)
{
    static const unsigned long local[] = {0xEF53, 0x58465342, 0x9123683E, 0x01021994,
                                          0xF2F52010};

    for (size_t i = 0; i < sizeof(local) / sizeof(local[0]); i++)
        if ((unsigned long)fs_type == local[i])
            return 1;
    return 0;
}

/* Record the directory's identity once, for conn_bind(): what the kernel
 * has of the inode, so that a hung lockspace filesystem (FUSE, NFS) is not
 * asked.  And whether its filesystem is local. */
static void
space_identify(lockd_space *s)
{
    struct statfs sfs;
    struct statx stx;

    s->remote = fstatfs(s->dirfd, &sfs) < 0 || !fs_is_local((long)sfs.f_type);

    if (statx(s->dirfd, "", AT_EMPTY_PATH | AT_STATX_DONT_SYNC,
              STATX_TYPE | STATX_INO | STATX_MNT_ID, &stx) < 0 ||
        !S_ISDIR(stx.stx_mode))
        return;
    s->has_id = 1;
    s->dev = makedev(stx.stx_dev_major, stx.stx_dev_minor);
    s->ino = stx.stx_ino;
    s->mnt = (stx.stx_mask & STATX_MNT_ID) ? stx.stx_mnt_id : 0;
}

LOCKD_API int
lockd_space_open(const char *dir, uint32_t flags, lockd_space **ret_space)
{
    const uint32_t modes =
        LOCKD_OPEN_VERBATIM | LOCKD_OPEN_CANONICAL | LOCKD_OPEN_LVM | LOCKD_OPEN_SCSI;
    const uint32_t known = LOCKD_OPEN_CREATE | modes | LOCKD_OPEN_READONLY;
    lockd_space *s = NULL;
    char *path = NULL;
    int want, r;

    if (!ret_space || (flags & ~known) || __builtin_popcount(flags & modes) > 1 ||
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
        r = lockd_default_dir(&path);
    if (r < 0)
        goto out;
    s = calloc(1, sizeof(*s));
    if (!s) {
        r = -ENOMEM;
        goto out;
    }
    s->refs = 1;
    s->dir = path;
    path = NULL;
    s->dirfd = open_dir(s->dir, !!(flags & LOCKD_OPEN_CREATE));
    if (s->dirfd < 0) {
        r = s->dirfd;
        goto out;
    }
    space_identify(s);
    s->readonly = !!(flags & LOCKD_OPEN_READONLY);
    want = (flags & LOCKD_OPEN_CANONICAL) ? LOCKD_MODE_CANONICAL
           : (flags & LOCKD_OPEN_LVM)     ? LOCKD_MODE_LVM
           : (flags & LOCKD_OPEN_SCSI)    ? LOCKD_MODE_SCSI
                                          : LOCKD_MODE_VERBATIM;
    r = settings_settle(s, want, !!(flags & modes), !!(flags & LOCKD_OPEN_READONLY));
    if (r < 0)
        goto out;
    *ret_space = s;
    s = NULL;
out:
    lockd_space_close(s);
    free(path);
    return r;
}

/* Drop one reference to space; the last closes its directory. */
static void
space_unref(lockd_space *space)
{
    if (!space || __atomic_sub_fetch(&space->refs, 1, __ATOMIC_ACQ_REL) != 0)
        return;
    if (space->dirfd >= 0)
        safe_close(space->dirfd);
    free(space->dir);
    free(space);
}

LOCKD_API void
lockd_space_close(lockd_space *space)
{
    space_unref(space);
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
    dlen = strlen(buf);
    /* realpath gives "/" for the root and no trailing slash otherwise. */
    if ((size_t)snprintf(buf + dlen, size - dlen, "%s%s", dlen > 1 ? "/" : "", base) >=
        size - dlen)
        return -ENAMETOOLONG;
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
    if (mode_named(space->mode))
        return -EMEDIUMTYPE; /* named by device: lockd_space_block_key() */
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

/*
 * Open name in dirfd with flags, but only if it is a regular file (or, if
 * blk_ok, a block device).  It is looked at through an O_PATH descriptor
 * first, which opens nothing: no driver's open runs, a FIFO cannot block,
 * inotify sees no IN_OPEN.  So a character device planted there, which may
 * act on open (a watchdog arms), a FIFO or a socket is refused without ever
 * being opened.  The inode looked at is then reopened through /proc/self/fd,
 * not the name, so a swap in between cannot make us open something else;
 * without /proc the name is opened and must still be that inode.
 * O_NOFOLLOW in flags applies to the look (a symlink is -ELOOP).  Returns the
 * fd and *ret_st, -ELOOP, -EISDIR, -ENXIO (any other kind of file, or
 * without /proc a name pointed elsewhere meanwhile), or open's error.
 */
static int
open_looked(int dirfd, const char *name, int flags, int blk_ok, struct stat *ret_st)
{
    char self[64];
    struct stat st;
    int pfd, fd, r;

    pfd = open_retry(dirfd, name, O_PATH | O_CLOEXEC | (flags & O_NOFOLLOW), 0);
    if (pfd < 0)
        return pfd;
    if (RETRY_EINTR(LOCKD_SYS_FSTAT(pfd, &st)) < 0)
        r = negerrno();
    else
        r = blk_ok && S_ISBLK(st.st_mode) ? 0 : check_regular(&st);
    if (r < 0) {
        safe_close(pfd);
        return r;
    }
    /* /proc/self/fd/N is a magic link: O_NOFOLLOW would refuse it.  It
     * leads to the very inode looked at, so st is the new fd's too. */
    snprintf(self, sizeof(self), "/proc/self/fd/%d", pfd);
    fd = open_retry(AT_FDCWD, self, flags & ~O_NOFOLLOW, 0);
    if (fd >= 0) {
        safe_close(pfd);
        *ret_st = st;
        return fd;
    }
    if (fd == -ENOENT && access("/proc/self/fd", F_OK) < 0)
        fd = open_retry(dirfd, name, flags, 0);
    safe_close(pfd);
    if (fd < 0)
        return fd;
    if (RETRY_EINTR(LOCKD_SYS_FSTAT(fd, ret_st)) < 0)
        r = negerrno();
    else if (ret_st->st_dev != st.st_dev || ret_st->st_ino != st.st_ino ||
             ret_st->st_rdev != st.st_rdev)
        r = -ENXIO;
    if (r < 0) {
        safe_close(fd);
        return r;
    }
    return fd;
}

/* Open an existing lease file; -ENOENT if there is none.  Nothing but a
 * regular file is opened (open_looked()); O_NONBLOCK is for the fallback
 * without /proc, and O_RDWR fails on a directory anyway. */
static int
lease_open(int dirfd, const char *key, struct stat *ret_st)
{
    return open_looked(dirfd, key, LEASE_OPEN_FLAGS, 0, ret_st);
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
 * The index: byte INDEX_BYTE of .lockd-index is locked shared to create a
 * lease file and exclusive to delete one (gc).  gc holds it for one batch
 * at a time (GC_BATCH_NS), so no creator waits long even where a lock costs
 * half a millisecond; but a creator that polls (a try or timed acquire)
 * would rarely catch the moment between two batches.  So a creator first
 * takes INTENT_BYTE shared and keeps it until it is done, and gc, before
 * each batch, waits for INTENT_BYTE exclusively: every creator already
 * waiting goes first.  gc lets go of INTENT_BYTE as soon as it holds the
 * index, so creators arriving during a batch queue up behind it.  (A steady
 * stream of creators can delay gc, never the other way round.)
 *
 * The index is opened afresh for every use, because an OFD lock belongs to
 * the open file description: sharing one between threads would let one
 * thread's unlock drop another's lock.  Something other than a regular file
 * planted as the index is refused like a planted lease, never opened, never
 * locked: a device may act on open, and a lock on it would exclude nobody.
 */
#define INDEX_OPEN_FLAGS (O_RDWR | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY)

static int
index_open(int dirfd)
{
    struct stat st;
    int fd = open_looked(dirfd, INDEX_NAME, INDEX_OPEN_FLAGS, 0, &st);

    if (fd != -ENOENT)
        return fd;
    /* O_EXCL: what another created meanwhile is looked at, never opened. */
    fd = open_retry(dirfd, INDEX_NAME, INDEX_OPEN_FLAGS | O_CREAT | O_EXCL, 0600);
    if (fd != -EEXIST)
        return fd;
    return open_looked(dirfd, INDEX_NAME, INDEX_OPEN_FLAGS, 0, &st);
}

static int lock_wait(int fd, short type, off_t byte, int64_t deadline,
                     int64_t backoff_max);

/*
 * Take the index shared, to create a lease file; release by closing the fd.
 * deadline as for lock_wait(), except that a try (0) waits for the index up
 * to LOCKD_INDEX_WAIT_MS and then fails with -EINPROGRESS: the lease itself
 * may well be free, and -EAGAIN means busy and nothing else.
 */
static int
index_lock_shared(int dirfd, int64_t deadline)
{
    int64_t d = deadline ? deadline : now_ns() + (int64_t)LOCKD_INDEX_WAIT_MS * 1000000;
    int fd = index_open(dirfd), r;

    if (fd < 0)
        return fd;
    r = lock_wait(fd, F_RDLCK, INTENT_BYTE, d, INDEX_BACKOFF_MAX_NS);
    if (r == 0)
        r = lock_wait(fd, F_RDLCK, INDEX_BYTE, d, INDEX_BACKOFF_MAX_NS);
    if (r < 0) {
        safe_close(fd);
        return r == -ETIMEDOUT && deadline == 0 ? -EINPROGRESS : r;
    }
    return fd;
}

/*
 * gc: take the index exclusively on fd, after every creator already waiting
 * for it (above).  INTENT_BYTE is held only while INDEX_BYTE is free to
 * take: were gc to wait for INDEX_BYTE with INTENT_BYTE held, anything that
 * holds INDEX_BYTE for long without INTENT_BYTE (an older lockd creator, a
 * leaked descriptor) would hold up every new creator behind gc.  So gc
 * tries, and otherwise lets INTENT_BYTE go and tries again later.
 */
static int
index_gc_enter(int fd)
{
    int64_t backoff = 100000;
    int r;

    for (;;) {
        r = byte_lock(fd, F_OFD_SETLKW, F_WRLCK, INTENT_BYTE, NULL);
        if (r < 0)
            return r;
        r = byte_lock(fd, F_OFD_SETLK, F_WRLCK, INDEX_BYTE, NULL);
        (void)byte_lock(fd, F_OFD_SETLK, F_UNLCK, INTENT_BYTE, NULL);
        if (r != -EAGAIN)
            return r;
        sleep_ns(backoff);
        backoff = backoff * 2 < BACKOFF_MAX_NS ? backoff * 2 : BACKOFF_MAX_NS;
    }
}

static void
index_gc_leave(int fd)
{
    (void)byte_lock(fd, F_OFD_SETLK, F_UNLCK, INDEX_BYTE, NULL);
}

/* Create a lease file under the shared index lock, so that gc (which deletes
 * under the exclusive one) never removes a file while it is being created.
 * The index is let go before the lease is locked (it is never held while
 * waiting), so gc may still remove the file in between: the inode check
 * after the grant sees that and starts over. */
static int
lease_create(int dirfd, const char *key, int64_t deadline, struct stat *ret_st)
{
    int ifd, fd, r = 0;

    ifd = index_lock_shared(dirfd, deadline);
    if (ifd < 0)
        return ifd;
    /* O_EXCL: a file that appeared meanwhile is looked at before it is
     * opened, like any existing one. */
    fd = open_retry(dirfd, key, LEASE_OPEN_FLAGS | O_CREAT | O_EXCL, 0600);
    if (fd >= 0 && RETRY_EINTR(LOCKD_SYS_FSTAT(fd, ret_st)) < 0)
        r = negerrno();
    else if (fd == -EEXIST)
        fd = lease_open(dirfd, key, ret_st);
    /* Created and unlinked again by a virtlockd peer, which takes no index
     * lock: -ESTALE has lease_take() start over. */
    if (fd == -ENOENT)
        fd = -ESTALE;
    safe_close(ifd);
    if (r < 0) {
        safe_close(fd);
        return r;
    }
    return fd;
}

/*
 * Whether key in dirfd still names the inode st describes, which fd has
 * open and locked.  1: current; 0: stale, the caller starts over (the name
 * is gone or names another inode, or the file has no name left).
 *
 * On a network filesystem the lookup of the name is answered from this
 * client's cache of names for a while (a second on GlusterFS's FUSE
 * client, whatever its entry-timeout), which another host's unlink does not
 * reach: found on GlusterFS, gc on one host racing acquires on another, both
 * hosts ran with the lease at once.  There the file itself is asked first,
 * its attributes fetched from the server: one with no link left, or one the
 * server no longer knows (ESTALE), was unlinked, and its lock guards
 * nothing.  lockd never links a lease file twice, so a file that still has
 * its link is the one its name refers to.  (GlusterFS answers that fetch
 * from its own client-side cache unless the volume has
 * performance.stat-prefetch off: lockd-helper(8), "Shared storage".)
 */
static int
lease_current(int dirfd, const char *key, int fd, const struct stat *st, int remote)
{
    struct stat now;

    if (remote) {
        struct statx stx;

        if (RETRY_EINTR(statx(fd, "", AT_EMPTY_PATH | AT_STATX_FORCE_SYNC, STATX_NLINK,
                              &stx)) < 0)
            return errno == ESTALE ? 0 : negerrno();
        if (stx.stx_nlink == 0)
            return 0;
    }
    if (RETRY_EINTR(LOCKD_SYS_FSTATAT(dirfd, key, &now, AT_SYMLINK_NOFOLLOW)) < 0)
        return errno == ENOENT || errno == ESTALE ? 0 : negerrno();
    return now.st_dev == st->st_dev && now.st_ino == st->st_ino;
}

/*
 * Lock byte `byte` of fd.  deadline is 0 to try once, -1 to wait in the
 * kernel, else a CLOCK_MONOTONIC time in ns: a timed wait polls F_OFD_SETLK
 * with a backoff doubling from 1 ms (or backoff_max, if less) to
 * backoff_max, because the kernel offers no timed lock and lockd will not
 * use signals or threads to make one.
 */
static int
lock_wait(int fd, short type, off_t byte, int64_t deadline, int64_t backoff_max)
{
    int64_t backoff = 1000000 < backoff_max ? 1000000 : backoff_max, left;
    int r;

    if (deadline < 0)
        return byte_lock(fd, F_OFD_SETLKW, type, byte, NULL);
    for (;;) {
        r = byte_lock(fd, F_OFD_SETLK, type, byte, NULL);
        if (r != -EAGAIN || deadline == 0)
            return r;
        left = deadline - now_ns();
        if (left <= 0)
            return -ETIMEDOUT;
        sleep_ns(backoff < left ? backoff : left);
        if (backoff < backoff_max)
            backoff = backoff * 2 < backoff_max ? backoff * 2 : backoff_max;
    }
}

static int
lease_lock_wait(int fd, short type, int64_t deadline)
{
    return lock_wait(fd, type, 0, deadline, BACKOFF_MAX_NS);
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

/*
 * A try found the lease locked.  That may be gc, which takes each lease's
 * lock for a moment to see whether anyone holds it, and only while it holds
 * the index exclusively.  Behind the shared index no gc holds any lease
 * lock, so a second try there answers for real holders only: -EAGAIN keeps
 * its one meaning.  (The busy path only: a free lease never comes here.)
 */
static int
lease_lock_past_gc(int dirfd, int fd, short type)
{
    int ifd = index_lock_shared(dirfd, 0), r;

    /* Whether or not the index could be had (a gc batch that outlasts
     * LOCKD_INDEX_WAIT_MS, an index we may not open), the lease is asked
     * once more: gc locks a lease for microseconds, so one still locked
     * after that is held, and says so. */
    r = lease_lock(fd, F_OFD_SETLK, type, NULL);
    if (ifd >= 0)
        safe_close(ifd);
    return r;
}

/* Take one lease: returns its locked fd, or -errno with nothing held. */
static int
lease_take(int dirfd, int remote, const char *key, int mode, int64_t deadline)
{
    short type = mode == LOCKD_SHARED ? F_RDLCK : F_WRLCK;
    struct stat st;
    int fd, r, tries;

    /* Bounded, so that a bug or a hostile peer that keeps replacing the file
     * turns into an error instead of a spin.  On a network filesystem the
     * name may keep pointing at the old file until this client's cache of
     * names expires (a second on GlusterFS): after the first few, each
     * try waits a little longer, up to 10 ms, so the bound outlasts it. */
    for (tries = 0; tries < STALE_RETRIES_MAX; tries++) {
        if (remote && tries > 4)
            sleep_ns((int64_t)(tries < 10 ? tries : 10) * 1000000);
        fd = lease_open(dirfd, key, &st);
        if (fd == -ENOENT)
            fd = lease_create(dirfd, key, deadline, &st);
        if (fd == -ESTALE)
            continue; /* a cached name of a file its server lost */
        if (fd < 0)
            return fd;
        r = lease_lock_wait(fd, type, deadline);
        if (r == -EAGAIN)
            r = lease_lock_past_gc(dirfd, fd, type);
        if (r == 0)
            r = lease_current(dirfd, key, fd, &st, remote);
        if (r == 1)
            return fd;
        /* Not granted (r < 0), or granted on an inode that gc or a
         * virtlockd peer unlinked meanwhile (r == 0, or a server that no
         * longer knows it: ESTALE): let go and start over on whatever the
         * name refers to now. */
        (void)lease_drop(fd);
        if (r < 0 && r != -ESTALE)
            return r;
    }
    return -ESTALE;
}

/* ------------------------------------------------------------------------
 * Holder records
 *
 * After an exclusive grant lockd writes who holds the disk into the lease
 * file, so that another host can name the holder: a few "key=value" lines
 * under a "lockd-holder 1" line, each value with its control bytes and
 * backslashes written as \xHH, the whole at most HOLDER_MAX bytes.  The
 * lock stays on byte 0, length 1 (virtlockd never reads a lease file's
 * contents, and locks only that byte).  Shared holders write nothing: a
 * shared lease is one of several, and `who` counts them from the lock.
 */
#define HOLDER_MAGIC "lockd-holder 1\n"
#define HOLDER_MAX   4096

/* This machine's name and /etc/machine-id, read once. */
static void
holder_host(char *host, size_t hsize, char *mid, size_t msize)
{
    static char h[256], m[33];
    static int done;

    if (!done) {
        int fd = open("/etc/machine-id", O_RDONLY | O_CLOEXEC);
        ssize_t n = fd >= 0 ? read(fd, m, sizeof(m) - 1) : -1;

        m[n > 0 ? (size_t)n : 0] = '\0';
        m[strcspn(m, "\n")] = '\0';
        if (fd >= 0)
            close(fd);
        if (gethostname(h, sizeof(h) - 1) < 0)
            h[0] = '\0';
        done = 1;
    }
    snprintf(host, hsize, "%s", h);
    snprintf(mid, msize, "%s", m);
}

/* Append "key=value\n", the value escaped and cut to max bytes of it. */
static size_t
holder_put(char *buf, size_t at, const char *key, const char *value, size_t max)
{
    size_t i;

    at += (size_t)snprintf(buf + at, HOLDER_MAX - at, "%s=", key);
    for (i = 0; value && value[i] && i < max && at + 5 < HOLDER_MAX; i++) {
        unsigned char c = (unsigned char)value[i];

        if (c < 0x20 || c == 0x7f || c == '\\')
            at += (size_t)snprintf(buf + at, HOLDER_MAX - at, "\\x%02x", c);
        else
            buf[at++] = (char)c;
    }
    buf[at++] = '\n';
    return at;
}

/* Parse a record; -ENODATA if buf is not one. */
static int
holder_parse(char *buf, size_t len, lockd_holder_info *ret)
{
    char *line, *next;

    memset(ret, 0, sizeof(*ret));
    buf[len] = '\0';
    if (strncmp(buf, HOLDER_MAGIC, strlen(HOLDER_MAGIC)) != 0)
        return -ENODATA;
    for (line = buf + strlen(HOLDER_MAGIC); *line; line = next) {
        char *eq, *v, *out, *dst = NULL;
        size_t size = 0;

        next = strchr(line, '\n');
        if (!next)
            break; /* a record cut short: its last line is not trusted */
        *next++ = '\0';
        eq = strchr(line, '='); /* of this line only */
        if (!eq)
            continue;
        *eq = '\0';
        v = eq + 1;
        if (strcmp(line, "host") == 0)
            dst = ret->host, size = sizeof(ret->host);
        else if (strcmp(line, "machine-id") == 0)
            dst = ret->machine_id, size = sizeof(ret->machine_id);
        else if (strcmp(line, "owner") == 0)
            dst = ret->owner, size = sizeof(ret->owner);
        else if (strcmp(line, "uuid") == 0)
            dst = ret->uuid, size = sizeof(ret->uuid);
        else if (strcmp(line, "version") == 0)
            dst = ret->version, size = sizeof(ret->version);
        else if (strcmp(line, "resource") == 0)
            dst = ret->resource, size = sizeof(ret->resource);
        else if (strcmp(line, "pid") == 0)
            ret->pid = (int32_t)strtol(v, NULL, 10);
        else if (strcmp(line, "since") == 0)
            ret->since = strtoll(v, NULL, 10);
        else if (strcmp(line, "epoch") == 0)
            ret->epoch = strtoull(v, NULL, 16);
        else if (strcmp(line, "generation") == 0)
            ret->generation = strtoull(v, NULL, 10);
        if (!dst)
            continue; /* a field of a later release, or a number */
        /* Undo the escapes; control bytes stay escaped for display. */
        for (out = dst; *v && out < dst + size - 1; v++) {
            unsigned c = 0;

            if (v[0] == '\\' && v[1] == 'x' && isxdigit((unsigned char)v[2]) &&
                isxdigit((unsigned char)v[3]) && sscanf(v + 2, "%2x", &c) == 1 && c >= 0x20 &&
                c != 0x7f) {
                *out++ = (char)c;
                v += 3;
            } else
                *out++ = *v;
        }
        *out = '\0';
    }
    return 0;
}

/* Read fd's record from offset 0; -ENODATA if none.  *ret_len: the bytes
 * there (a record is never longer than HOLDER_MAX). */
static int
holder_read_fd(int fd, lockd_holder_info *ret, size_t *ret_len)
{
    char buf[HOLDER_MAX + 1];
    ssize_t n;

    do
        n = pread(fd, buf, HOLDER_MAX, 0);
    while (n < 0 && errno == EINTR);
    if (n < 0)
        return -errno;
    *ret_len = (size_t)n;
    return holder_parse(buf, (size_t)n, ret);
}

/*
 * Write e's record (e just granted exclusively, or re-described): its
 * generation one past the file's (kept with e, so that a re-description
 * keeps it), a random epoch when the file has none.  A failure is not the
 * acquire's: the record only names the holder.
 */
static void
holder_write(struct lease_ent *e, int bump, const char *owner, const char *uuid, int32_t pid,
             const char *resource)
{
    char buf[HOLDER_MAX], host[256], mid[33], num[32];
    size_t at = 0;
    ssize_t n;

    if (bump) {
        lockd_holder_info *old = malloc(sizeof(*old));

        if (old && holder_read_fd(e->fd, old, &e->len) == 0 && old->epoch) {
            e->epoch = old->epoch;
            e->gen = old->generation + 1;
        } else {
            randombytes_buf(&e->epoch, sizeof(e->epoch));
            e->gen = 1;
        }
        free(old);
        e->since = (int64_t)time(NULL);
    }
    holder_host(host, sizeof(host), mid, sizeof(mid));
    memcpy(buf, HOLDER_MAGIC, strlen(HOLDER_MAGIC));
    at = strlen(HOLDER_MAGIC);
    at = holder_put(buf, at, "host", host, 255);
    at = holder_put(buf, at, "machine-id", mid, 32);
    at = holder_put(buf, at, "owner", owner, LOCKD_OWNER_NAME_MAX);
    at = holder_put(buf, at, "uuid", uuid, 36);
    snprintf(num, sizeof(num), "%d", (int)pid);
    at = holder_put(buf, at, "pid", num, sizeof(num));
    snprintf(num, sizeof(num), "%lld", (long long)e->since);
    at = holder_put(buf, at, "since", num, sizeof(num));
    at = holder_put(buf, at, "version", LOCKD_VERSION_STRING, 31);
    snprintf(num, sizeof(num), "%016llx", (unsigned long long)e->epoch);
    at = holder_put(buf, at, "epoch", num, sizeof(num));
    snprintf(num, sizeof(num), "%llu", (unsigned long long)e->gen);
    at = holder_put(buf, at, "generation", num, sizeof(num));
    at = holder_put(buf, at, "resource", resource, LOCKD_HOLDER_NAME_MAX);
    do
        n = pwrite(e->fd, buf, at, 0);
    while (n < 0 && errno == EINTR);
    /* A longer record before this one: its tail must not read as ours. */
    if (n == (ssize_t)at && e->len > at)
        (void)ftruncate(e->fd, (off_t)at);
    if (n == (ssize_t)at)
        e->len = at;
}

LOCKD_API int
lockd_lease_set_holder(lockd_lease *lease, const char *owner, const char *uuid, int32_t pid,
                       const char *const *names)
{
    size_t i;

    if (!lease || pid < 0 || (owner && strlen(owner) > LOCKD_OWNER_NAME_MAX) ||
        (uuid && *uuid && strlen(uuid) != 36))
        return -EINVAL;
    for (i = 0; i < lease->n; i++) {
        struct lease_ent *e = &lease->ent[i];
        const char *name = NULL;
        size_t k;

        if (e->mode != LOCKD_EXCLUSIVE || e->fd < 0 || e->path)
            continue; /* a direct lease's file is the disk: never written */
        for (k = 0; names && k < lease->given && !name; k++)
            if (lease->slot[k] == i)
                name = names[k];
        holder_write(e, 0, owner, uuid, pid, name);
    }
    return 0;
}

LOCKD_API int
lockd_holder(const lockd_space *space, const char *key, lockd_holder_info *ret)
{
    char buf[HOLDER_MAX + 1];
    struct stat st;
    ssize_t n;
    int fd, r;

    if (!space || !ret || !space_key_valid(space, key))
        return -EINVAL;
    fd = open_looked(space->dirfd, key, PEEK_OPEN_FLAGS, 0, &st);
    if (fd < 0)
        return fd;
    /* Past this client's page cache: another host wrote it.  (A fresh
     * open revalidates on NFS and FUSE; dropping the cache is for the rest.) */
    (void)posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    do
        n = pread(fd, buf, HOLDER_MAX, 0);
    while (n < 0 && errno == EINTR);
    r = n < 0 ? -errno : holder_parse(buf, (size_t)n, ret);
    close(fd);
    return r;
}

/* ------------------------------------------------------------------------
 * Leases: the public calls
 */

static int
ent_cmp(const void *a, const void *b)
{
    return strcmp(((const struct lease_ent *)a)->key, ((const struct lease_ent *)b)->key);
}

/* Copy, check, sort and merge the request into a new lease (fds all -1),
 * remembering where each of the caller's keys went (lockd_lease_index()). */
static int
lease_plan(size_t n, const char *const *keys, const int *modes, int named,
           lockd_lease **ret)
{
    lockd_lease *l;
    size_t i, j;

    /* slot[] follows ent[] in one allocation. */
    _Static_assert(_Alignof(struct lease_ent) % _Alignof(uint32_t) == 0, "slot align");
    l = calloc(1, sizeof(*l) + n * (sizeof(l->ent[0]) + sizeof(l->slot[0])));
    if (!l)
        return -ENOMEM;
    l->slot = (uint32_t *)(void *)(l->ent + n);
    for (i = 0; i < n; i++) {
        int m = modes ? modes[i] : LOCKD_EXCLUSIVE;

        if (!(named ? name_key_valid(keys[i]) : lockd_key_valid(keys[i])) ||
            (m != LOCKD_EXCLUSIVE && m != LOCKD_SHARED)) {
            free(l);
            return -EINVAL;
        }
        memcpy(l->ent[i].key, keys[i], strlen(keys[i]) + 1);
        l->ent[i].mode = m;
        l->ent[i].fd = -1;
        l->ent[i].given = (uint32_t)i;
    }
    qsort(l->ent, n, sizeof(l->ent[0]), ent_cmp);
    for (i = 0, j = 0; i < n; i++) {
        if (j > 0 && strcmp(l->ent[j - 1].key, l->ent[i].key) == 0) {
            if (l->ent[i].mode == LOCKD_EXCLUSIVE)
                l->ent[j - 1].mode = LOCKD_EXCLUSIVE;
            l->slot[l->ent[i].given] = (uint32_t)(j - 1);
            continue;
        }
        l->slot[l->ent[i].given] = (uint32_t)j;
        l->ent[j++] = l->ent[i];
    }
    l->n = j;
    l->given = n;
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
    if (space->readonly)
        return -EBADF;
    r = lease_plan(n, keys, modes, mode_named(space->mode), &l);
    if (r < 0)
        return r;
    /* The helper checks each handed-over fd against its lockspace, which
     * it is shown once per connection (lockd_conn_handoff()); the lease
     * may outlive the caller's handle. */
    l->space = space;
    __atomic_add_fetch(&space->refs, 1, __ATOMIC_RELAXED);
    deadline = timeout_ms == LOCKD_FOREVER ? -1
               : timeout_ms == LOCKD_TRY   ? 0
                                           : now_ns() + (int64_t)timeout_ms * 1000000;
    /* In sorted order: OFD locks have no deadlock detection, and two callers
     * taking overlapping sets in one order can never wait on each other. */
    for (i = 0; i < l->n; i++) {
        r = lease_take(space->dirfd, space->remote, l->ent[i].key, l->ent[i].mode, deadline);
        if (r < 0)
            break;
        l->ent[i].fd = r;
    }
    if (i < l->n) {
        (void)lockd_lease_release(l);
        return r;
    }
    for (i = 0; i < l->n; i++)
        if (l->ent[i].mode == LOCKD_EXCLUSIVE)
            holder_write(&l->ent[i], 1, NULL, NULL, (int32_t)getpid(), NULL);
    *ret_lease = l;
    return 0;
}

/* ------------------------------------------------------------------------
 * Block devices: the names virtlockd gives them in an lvm or scsi lockspace
 *
 * virtlockd runs two helpers to name a block device's lease: lvs(8) for an
 * LV, scsi_id(8) for a SCSI LUN, and uses what they print, raw, as the file
 * name (libvirt src/locking/lock_driver_lockd.c).  Both only re-read what
 * the kernel caches in sysfs: device-mapper keeps the LVM UUID in dm/uuid,
 * the SCSI midlayer the raw VPD pages 0x83 and 0x80 in device/vpd_pg83 and
 * vpd_pg80 (read at scan time).  Reading them here needs no fork and exec
 * per disk, no SG_IO (root) and no lvm2 or udev.  The SCSI part follows
 * systemd's scsi_id (src/udev/scsi_id/scsi_serial.c, scsi_id.c) and udev's
 * string cleaning down to their quirks: a name that differs in one byte is
 * another lease file, and two hosts would both hold the disk.  The samples
 * in test/sysfs/ and their names were checked against Debian 12's scsi_id.
 */

#define LVM_KEY_LEN 38 /* 32 ID characters and 6 dashes */

/*
 * scsi_id asks for 254 bytes of each page (SCSI_INQ_BUFF_LEN, scsi.h) into a
 * zeroed buffer, so anything a device returns past byte 254 is invisible to
 * it.  We truncate the sysfs copy, which holds the whole page, the same way.
 */
#define INQ_LEN 254
#define SERIAL_LEN LOCKD_BLOCK_KEY_SIZE
#define VENDOR_LEN 8
#define MODEL_LEN 16
#define LVM_UUID_LEN 68 /* "LVM-" + VG ID (32) + LV ID (32), lvm2 dev_manager.c */

/* Designator types and code sets of VPD page 0x83 (SPC-4 7.8.6; scsi_id's scsi.h). */
enum {
    ID_VENDOR_SPECIFIC = 0,
    ID_T10_VENDOR = 1,
    ID_EUI_64 = 2,
    ID_NAA = 3,
    NAA_ANY = 0xff,
    CODE_BINARY = 1,
    CODE_ASCII = 2,
};

/*
 * scsi_id's id_search_list, minus its first entry (target port group), which
 * it records for --export but never returns as the serial.  Earlier entries
 * win over later ones whatever their order in the page.
 */
static const struct {
    uint8_t id_type, naa_type, code_set;
} search_list[] = {
    {ID_NAA, 6, CODE_BINARY},
    {ID_NAA, 6, CODE_ASCII},
    {ID_NAA, 5, CODE_BINARY},
    {ID_NAA, 5, CODE_ASCII},
    {ID_NAA, NAA_ANY, CODE_BINARY},
    {ID_NAA, NAA_ANY, CODE_ASCII},
    {ID_EUI_64, NAA_ANY, CODE_BINARY},
    {ID_EUI_64, NAA_ANY, CODE_ASCII},
    {ID_T10_VENDOR, NAA_ANY, CODE_BINARY},
    {ID_T10_VENDOR, NAA_ANY, CODE_ASCII},
    {ID_VENDOR_SPECIFIC, NAA_ANY, CODE_BINARY},
    {ID_VENDOR_SPECIFIC, NAA_ANY, CODE_ASCII},
};

static const char hexdig[] = "0123456789abcdef";

/* What scsi_id learns from one device: its pages (zero-padded) and INQUIRY strings. */
struct scsi_dev {
    /* Zeroed past INQ_LEN: scsi_id reads a descriptor's header at the
     * page's last bytes one byte past its buffer; here that byte is 0. */
    uint8_t pg83[INQ_LEN + 4], pg80[INQ_LEN + 4];
    int has83, has80;
    char vendor[VENDOR_LEN + 1], model[MODEL_LEN + 1];
};

/* ---- sysfs access ------------------------------------------------------ */

/* Appends S to BUF at *LEN; -ENAMETOOLONG rather than a silent cut. */
static int
path_add(char *buf, size_t *len, const char *s)
{
    size_t n = strlen(s);

    if (*len + n >= PATH_MAX)
        return -ENAMETOOLONG;
    memcpy(buf + *len, s, n + 1);
    *len += n;
    return 0;
}

static void
fmt_uint(char *buf, unsigned v)
{
    char tmp[16];
    size_t n = 0;

    do
        tmp[n++] = (char)('0' + v % 10);
    while ((v /= 10) != 0);
    while (n > 0)
        *buf++ = tmp[--n];
    *buf = '\0';
}

/*
 * Opens <root>/dev/block/MAJ:MIN, following the symlink into /sys/devices so
 * that ".." from a partition reaches its disk.  O_PATH: we only use it as a
 * directory for the *at() calls.
 */
static int
devdir_open(const char *root, unsigned major, unsigned minor)
{
    char path[PATH_MAX], num[16];
    size_t len = 0;
    int r, fd;

    r = path_add(path, &len, root);
    if (r == 0)
        r = path_add(path, &len, "/dev/block/");
    fmt_uint(num, major);
    if (r == 0)
        r = path_add(path, &len, num);
    if (r == 0)
        r = path_add(path, &len, ":");
    fmt_uint(num, minor);
    if (r == 0)
        r = path_add(path, &len, num);
    if (r < 0)
        return r;
    fd = open(path, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    return fd;
}

/*
 * Reads up to SIZE bytes of the attribute NAME below DIRFD.  A missing file
 * is -ENODATA: the kernel hides attributes it has no value for (a VPD page
 * the device lacks, dm/ on a non-dm disk), so absence means "no such key".
 */
static int
attr_read(int dirfd, const char *name, void *buf, size_t size, size_t *ret_len)
{
    size_t len = 0;
    ssize_t n;
    int fd;

    assert(buf && ret_len);
    fd = openat(dirfd, name, O_RDONLY | O_NOCTTY | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT || errno == ENOTDIR ? -ENODATA : -errno;
    while (len < size) {
        n = read(fd, (char *)buf + len, size - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            n = -errno;
            close(fd);
            return (int)n;
        }
        if (n == 0)
            break;
        len += (size_t)n;
    }
    close(fd);
    *ret_len = len;
    return 0;
}

/* Reads a one-line text attribute into a C string, dropping the kernel's "\n". */
static int
attr_line(int dirfd, const char *name, char *buf, size_t size)
{
    size_t len;
    int r;

    assert(size > 1);
    r = attr_read(dirfd, name, buf, size - 1, &len);
    if (r < 0)
        return r;
    if (len > 0 && buf[len - 1] == '\n')
        len--;
    buf[len] = '\0';
    return 0;
}

/* ---- LVM --------------------------------------------------------------- */

/*
 * Does NAME (LEN bytes) followed by SEP begin the dm name at *DM?  dm names an
 * LV "VG-LV" with every '-' inside VG and LV doubled (libdm dm_build_dm_name),
 * which is how lvs maps "/dev/VG/LV" onto the same device we were given.
 */
static int
dm_name_eat(const char **dm, const char *name, size_t len)
{
    const char *p = *dm;

    for (size_t i = 0; i < len; i++) {
        if (*p++ != name[i])
            return 0;
        if (name[i] == '-' && *p++ != '-')
            return 0;
    }
    *dm = p;
    return 1;
}

/*
 * Is PATH a spelling lvs resolves to the dm device called DM_NAME?  lvs strips
 * "/dev/", splits "mapper/VG-LV" at the single dash, and otherwise wants
 * "VG/LV" (lvm2 tools/toollib.c skip_dev_dir).  Everything else, including
 * /dev/dm-N and /dev/disk/by-id/..., is taken as a VG name and fails there.
 */
static int
lvm_spelling_ok(const char *path, const char *dm_name)
{
    const char *rest, *slash, *dm = dm_name;

    if (strncmp(path, "/dev/", 5) != 0)
        return 0;
    rest = path + 5;
    if (strncmp(rest, "mapper/", 7) == 0)
        return rest[7] != '\0' && strcmp(rest + 7, dm_name) == 0;
    slash = strchr(rest, '/');
    if (!slash || slash == rest || slash[1] == '\0' || strchr(slash + 1, '/'))
        return 0;
    return dm_name_eat(&dm, rest, (size_t)(slash - rest)) && *dm++ == '-' &&
           dm_name_eat(&dm, slash + 1, strlen(slash + 1)) && *dm == '\0';
}

/*
 * Formats the LV ID half of a dm UUID as lvs does (lvm2 lib/id/id.c
 * id_write_format: groups 6-4-4-4-4-4-6).  A UUID with a layer suffix
 * ("-tpool", "-pool", "-real", ...) is an internal device and gets no key
 * (dev_manager.c _is_usable_uuid); so does one with characters lvm never
 * generates, since the key becomes a file name.
 */
static int
lvm_key_from_uuid(const char *uuid, char *ret, size_t size)
{
    static const int group[] = {6, 4, 4, 4, 4, 4, 6};
    const char *id = uuid + 36;
    char key[LVM_KEY_LEN + 1], *k = key;

    if (strlen(uuid) != LVM_UUID_LEN || strncmp(uuid, "LVM-", 4) != 0)
        return -ENODATA;
    for (size_t g = 0; g < sizeof(group) / sizeof(group[0]); g++) {
        if (g > 0)
            *k++ = '-';
        for (int i = 0; i < group[g]; i++, id++) {
            if (!((*id >= '0' && *id <= '9') || (*id >= 'a' && *id <= 'z') ||
                  (*id >= 'A' && *id <= 'Z')))
                return -ENODATA;
            *k++ = *id;
        }
    }
    *k = '\0';
    if (size < sizeof(key))
        return -ERANGE;
    memcpy(ret, key, sizeof(key));
    return 0;
}

static int
blockkey_lvm_dev(const char *sysfs_root, const char *path, unsigned major, unsigned minor,
                 char *ret, size_t size)
{
    char name[256], uuid[256];
    int r, fd;

    if (!sysfs_root || sysfs_root[0] != '/' || !path || !ret)
        return -EINVAL;
    if (size < LVM_KEY_LEN + 1)
        return -ERANGE;
    /* Cheap string test first: most paths are not LVM spellings at all. */
    if (strncmp(path, "/dev/", 5) != 0)
        return -ENODATA;
    fd = devdir_open(sysfs_root, major, minor);
    if (fd < 0)
        return fd;
    r = attr_line(fd, "dm/name", name, sizeof(name));
    if (r == 0 && !lvm_spelling_ok(path, name))
        r = -ENODATA;
    if (r == 0)
        r = attr_line(fd, "dm/uuid", uuid, sizeof(uuid));
    if (r == 0)
        r = lvm_key_from_uuid(uuid, ret, size);
    close(fd);
    return r;
}

/* ---- scsi_id ----------------------------------------------------------- */

/*
 * Puts vendor(8) + model(16) at OUT, or fails like scsi_id's
 * append_vendor_model() when either is short.  The kernel pads both with
 * spaces (scsi_scan.c scsi_sanitize_inquiry_string), so this only fails on
 * a broken tree; scsi_id, reading raw INQUIRY data, can also see NULs.
 */
static int
append_vendor_model(const struct scsi_dev *d, char *out)
{
    if (strnlen(d->vendor, VENDOR_LEN) != VENDOR_LEN ||
        strnlen(d->model, MODEL_LEN) != MODEL_LEN)
        return -1;
    memcpy(out, d->vendor, VENDOR_LEN);
    memcpy(out + VENDOR_LEN, d->model, MODEL_LEN);
    return VENDOR_LEN + MODEL_LEN;
}

/*
 * scsi_id's check_fill_0x83_id for the descriptor at page offset J: 0 and
 * SERIAL filled if it matches search entry S.  SERIAL starts zeroed and is
 * shared across attempts, as in scsi_id: a vendor-specific match whose
 * vendor/model check fails leaves its '0' prefix behind.
 */
static int
fill_0x83_id(const struct scsi_dev *d, size_t j, size_t s, char *serial)
{
    const uint8_t *p = d->pg83 + j;
    size_t len, k;
    int binary;

    /* Association must be the logical unit (0); the target port group that
     * scsi_id alone accepts with association 1 is never a serial. */
    if ((p[1] & 0x30) != 0 || (p[1] & 0x0f) != search_list[s].id_type)
        return 1;
    if (search_list[s].naa_type != NAA_ANY && search_list[s].naa_type != p[4] >> 4)
        return 1;
    if ((p[0] & 0x0f) != search_list[s].code_set)
        return 1;
    binary = search_list[s].code_set != CODE_ASCII;
    len = p[3] * (binary ? 2u : 1u) + 2;
    if (search_list[s].id_type == ID_VENDOR_SPECIFIC)
        len += VENDOR_LEN + MODEL_LEN;
    if (len > SERIAL_LEN)
        return 1;
    /* scsi_id would read past its 254-byte buffer here; we refuse instead. */
    if (j + 4 + p[3] > INQ_LEN)
        return 1;
    serial[0] = hexdig[search_list[s].id_type];
    k = 1;
    if (search_list[s].id_type == ID_VENDOR_SPECIFIC) {
        if (append_vendor_model(d, serial + 1) < 0)
            return 1;
        k += VENDOR_LEN + MODEL_LEN;
    }
    for (size_t i = 0; i < p[3]; i++) {
        if (binary) {
            serial[k++] = hexdig[p[4 + i] >> 4];
            serial[k++] = hexdig[p[4 + i] & 0x0f];
        } else {
            serial[k++] = (char)p[4 + i];
        }
    }
    return 0;
}

/*
 * scsi_id's do_scsi_page83_inquiry.  A nonzero byte 6 (the reserved byte of
 * an SPC-2/3 first descriptor) marks the SCSI-2 layout of old EMC Symmetrix:
 * then the whole payload, hex, after '3', and this never fails.  Otherwise
 * each search entry is tried against every descriptor in page order.  The
 * descriptor walk uses the 16-bit page length, as udev 252 (Debian 12) does.
 */
static int
page83_serial(const struct scsi_dev *d, char *serial)
{
    const uint8_t *pg = d->pg83;
    size_t end = ((size_t)pg[2] << 8) + pg[3] + 3;

    if (pg[1] != 0x83)
        return 1;
    if (pg[6] != 0) {
        size_t k = 1;

        serial[0] = hexdig[ID_NAA];
        for (size_t i = 0; i < pg[3] && k < SERIAL_LEN - 3; i++) {
            serial[k++] = hexdig[pg[4 + i] >> 4];
            serial[k++] = hexdig[pg[4 + i] & 0x0f];
        }
        return 0;
    }
    for (size_t s = 0; s < sizeof(search_list) / sizeof(search_list[0]); s++)
        for (size_t j = 4; j <= end && j + 4 <= INQ_LEN; j += pg[j + 3] + 4u)
            if (fill_0x83_id(d, j, s, serial) == 0)
                return 0;
    return 1;
}

/*
 * scsi_id's do_scsi_page80_inquiry: 'S' + vendor + model + the serial bytes
 * as the device sent them; a NUL among them ends the string, as in C.
 */
static int
page80_serial(const struct scsi_dev *d, char *serial)
{
    size_t len = d->pg80[3];

    if (d->pg80[1] != 0x80 || 1 + VENDOR_LEN + MODEL_LEN + len > SERIAL_LEN)
        return 1;
    serial[0] = 'S';
    if (append_vendor_model(d, serial + 1) < 0)
        return 1;
    memcpy(serial + 1 + VENDOR_LEN + MODEL_LEN, d->pg80 + 4, len);
    return 0;
}

/* udev's notion of whitespace: strspn(WHITESPACE) at the start, isspace() inside. */
static int
is_c_space(unsigned char c)
{
    return c == ' ' || (c >= '\t' && c <= '\r');
}

/*
 * udev_replace_whitespace(str, to, 255) as scsi_id calls it: drop leading
 * " \t\n\r", fold each inner run of isspace() into one '_', drop trailing
 * ones, read at most 255 bytes.  Note a leading \v or \f is not stripped and
 * becomes '_' (strspn and isspace disagree); we keep that.
 */
static void
replace_whitespace(const char *str, char *to)
{
    const size_t len = SERIAL_LEN - 1;
    size_t i = strspn(str, " \t\n\r"), j = 0;
    int space = 0;

    for (; j < len && i < len && str[i] != '\0'; i++) {
        if (is_c_space((unsigned char)str[i])) {
            space = 1;
            continue;
        }
        if (space) {
            if (j + 1 >= len)
                break;
            to[j++] = '_';
            space = 0;
        }
        to[j++] = str[i];
    }
    to[j] = '\0';
}

/* systemd utf8_encoded_valid_unichar(): length of a valid sequence at S, or 0. */
static size_t
utf8_valid_len(const unsigned char *s)
{
    size_t len;
    uint32_t c;

    if (s[0] < 0x80)
        return 1;
    else if ((s[0] & 0xe0) == 0xc0)
        len = 2, c = s[0] & 0x1f;
    else if ((s[0] & 0xf0) == 0xe0)
        len = 3, c = s[0] & 0x0f;
    else if ((s[0] & 0xf8) == 0xf0)
        len = 4, c = s[0] & 0x07;
    else if ((s[0] & 0xfc) == 0xf8)
        len = 5, c = s[0] & 0x03;
    else if ((s[0] & 0xfe) == 0xfc)
        len = 6, c = s[0] & 0x01;
    else
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80) /* also stops at the NUL */
            return 0;
        c = c << 6 | (s[i] & 0x3f);
    }
    /* Overlong forms, surrogates, non-characters and > U+10FFFF are invalid. */
    if (len != (c < 0x80       ? 1u
                : c < 0x800    ? 2u
                : c < 0x10000  ? 3u
                : c < 0x200000 ? 4u
                               : 5u))
        return 0;
    if (c >= 0x110000 || (c & 0xfffff800) == 0xd800 || (c >= 0xfdd0 && c <= 0xfdef) ||
        (c & 0xfffe) == 0xfffe)
        return 0;
    return len;
}

/*
 * udev_replace_chars(str, NULL): keep [0-9A-Za-z#+-.:=@_], "\x" and valid
 * multi-byte UTF-8; every other byte becomes '_'.  This is why no key holds
 * a '/' and every key is a usable file name.
 */
static void
replace_chars(char *str)
{
    size_t i = 0, n;

    while (str[i] != '\0') {
        unsigned char c = (unsigned char)str[i];

        if ((c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
            strchr("#+-.:=@_", c)) {
            i++;
        } else if (c == '\\' && str[i + 1] == 'x') {
            i += 2;
        } else if ((n = utf8_valid_len((const unsigned char *)str + i)) > 1) {
            i += n;
        } else {
            str[i++] = '_';
        }
    }
}

/*
 * The whole of `scsi_id --whitelisted --replace-whitespace` on one device:
 * page 0x83 if the device has it, else page 0x80 (scsi_get_serial walks the
 * supported-pages list for 0x83 first, then 0x80; the kernel creates a
 * vpd_pg* file exactly when page 0 lists it).  KEY gets SERIAL_LEN bytes.
 */
static int
scsi_key(const struct scsi_dev *d, char *key)
{
    char serial[SERIAL_LEN + 1] = {0};

    if (!(d->has83 && page83_serial(d, serial) == 0) && d->has80)
        (void)page80_serial(d, serial);
    /* scsi_id prints whatever is in serial[], even a failed attempt's prefix. */
    if (serial[0] == '\0')
        return -ENODATA;
    replace_whitespace(serial, key);
    replace_chars(key);
    return 0;
}

/* Reads a VPD page into its zeroed 254-byte window; absent is not an error. */
static int
vpd_read(int devfd, const char *name, uint8_t *buf, int *has)
{
    uint8_t page[4096];
    size_t len;
    int r;

    r = attr_read(devfd, name, page, sizeof(page), &len);
    if (r == -ENODATA)
        return 0;
    if (r < 0)
        return r;
    memcpy(buf, page, len < INQ_LEN ? len : INQ_LEN);
    *has = 1;
    return 0;
}

/* Reads vendor or model; the sysfs text is the padded INQUIRY field plus "\n". */
static int
inq_string(int devfd, const char *name, char *buf, size_t width)
{
    char line[64];
    int r;

    r = attr_line(devfd, name, line, sizeof(line));
    if (r == -ENODATA)
        return 0; /* leaves BUF empty: vendor-specific and 0x80 then fail */
    if (r < 0)
        return r;
    /* BUF is zeroed and WIDTH + 1 long; a longer line cannot come from the kernel. */
    memcpy(buf, line, strnlen(line, width));
    return 0;
}

/* The key of a SCSI disk's block directory: its device/ holds the pages. */
static int
scsi_disk_key(int blockfd, char *key)
{
    struct scsi_dev d;
    int r, fd;

    memset(&d, 0, sizeof(d));
    fd = openat(blockfd, "device", O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT || errno == ENOTDIR ? -ENODATA : -errno;
    r = vpd_read(fd, "vpd_pg83", d.pg83, &d.has83);
    if (r == 0)
        r = vpd_read(fd, "vpd_pg80", d.pg80, &d.has80);
    if (r == 0)
        r = inq_string(fd, "vendor", d.vendor, VENDOR_LEN);
    if (r == 0)
        r = inq_string(fd, "model", d.model, MODEL_LEN);
    close(fd);
    if (r == 0)
        r = d.has83 || d.has80 ? scsi_key(&d, key) : -ENODATA;
    return r;
}

/*
 * Is this dm UUID a multipath map or a kpartx partition of one?  Only those
 * pass scsi_id's SG_IO to a LUN whatever the table looks like (dm-mpath
 * prepare_ioctl); kpartx names partitions "part<N>-mpath-<wwid>".
 */
static int
is_mpath_uuid(const char *uuid)
{
    if (strncmp(uuid, "part", 4) == 0) {
        uuid += 4;
        if (*uuid < '0' || *uuid > '9')
            return 0;
        while (*uuid >= '0' && *uuid <= '9')
            uuid++;
        if (*uuid++ != '-')
            return 0;
    }
    return strncmp(uuid, "mpath-", 6) == 0;
}

static int scsi_dir_key(int blockfd, int depth, char *key);

/* A multipath map's key: every path must give the same one (they are one LUN). */
static int
mpath_key(int blockfd, int depth, char *key)
{
    char one[SERIAL_LEN];
    struct dirent *de;
    DIR *dir;
    int r = -ENODATA, fd;

    fd = openat(blockfd, "slaves", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT ? -ENODATA : -errno;
    dir = fdopendir(fd);
    if (!dir) {
        r = -errno;
        close(fd);
        return r;
    }
    while ((de = readdir(dir)) != NULL) {
        int q, sfd;

        if (de->d_name[0] == '.')
            continue;
        sfd = openat(dirfd(dir), de->d_name, O_PATH | O_DIRECTORY | O_CLOEXEC);
        if (sfd < 0) {
            r = -errno;
            break;
        }
        q = scsi_dir_key(sfd, depth + 1, one);
        close(sfd);
        if (q == -ENODATA)
            continue; /* a path without VPD cannot veto the others */
        if (q < 0 || (r == 0 && strcmp(one, key) != 0)) {
            r = q < 0 ? q : -EIO;
            break;
        }
        if (r == -ENODATA)
            memcpy(key, one, sizeof(one));
        r = 0;
    }
    closedir(dir);
    return r;
}

/*
 * The key of any block directory.  A partition defers to its disk: for root,
 * SG_IO on a partition goes to the whole disk (block/scsi_ioctl.c), so
 * scsi_id prints the disk's key.  Other dm targets (LVM, crypt) get none; see
 * the README for the single-segment-LV case where virtlockd as root differs.
 */
static int
scsi_dir_key(int blockfd, int depth, char *key)
{
    char uuid[256];
    int r, fd;

    if (depth > 4)
        return -ELOOP;
    if (faccessat(blockfd, "partition", F_OK, 0) == 0) {
        fd = openat(blockfd, "..", O_PATH | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0)
            return -errno;
        r = scsi_dir_key(fd, depth + 1, key);
        close(fd);
        return r;
    }
    r = attr_line(blockfd, "dm/uuid", uuid, sizeof(uuid));
    if (r == 0)
        return is_mpath_uuid(uuid) ? mpath_key(blockfd, depth, key) : -ENODATA;
    if (r != -ENODATA)
        return r;
    return scsi_disk_key(blockfd, key);
}

static int
blockkey_scsi(const char *sysfs_root, unsigned major, unsigned minor, char *ret,
              size_t size)
{
    char key[SERIAL_LEN];
    int r, fd;

    if (!sysfs_root || sysfs_root[0] != '/' || !ret)
        return -EINVAL;
    fd = devdir_open(sysfs_root, major, minor);
    if (fd < 0)
        return fd;
    r = scsi_dir_key(fd, 0, key);
    close(fd);
    if (r < 0)
        return r;
    if (strlen(key) >= size)
        return -ERANGE;
    memcpy(ret, key, strlen(key) + 1);
    return 0;
}

/* Whether path names a block device (stat), with its number; -ENODATA if
 * it names something else. */
static int
block_dev_of(const char *path, unsigned *ret_major, unsigned *ret_minor)
{
    struct stat st;

    /* Nothing there is no name either, as lvs and scsi_id print none. */
    if (stat(path, &st) < 0)
        return errno == ENOENT || errno == ENOTDIR ? -ENODATA : negerrno();
    if (!S_ISBLK(st.st_mode))
        return -ENODATA;
    *ret_major = major(st.st_rdev);
    *ret_minor = minor(st.st_rdev);
    return 0;
}

LOCKD_API int
lockd_block_key(const char *sysfs_root, const char *path, int mode, char *ret_key,
                size_t size)
{
    unsigned maj, min;
    int r;

    if (!sysfs_root)
        sysfs_root = "/sys";
    if (sysfs_root[0] != '/' || !path || path[0] != '/' || !ret_key || !mode_named(mode))
        return -EINVAL;
    /* libvirt's test is STRPREFIX(path, "/dev"): a string test, nothing more. */
    if (strncmp(path, "/dev", 4) != 0)
        return -ENODATA;
    r = block_dev_of(path, &maj, &min);
    if (r < 0)
        return r;
    return mode == LOCKD_MODE_LVM
               ? blockkey_lvm_dev(sysfs_root, path, maj, min, ret_key, size)
               : blockkey_scsi(sysfs_root, maj, min, ret_key, size);
}

LOCKD_API int
lockd_space_block_key(const lockd_space *space, const char *path, char *ret_key,
                      size_t size)
{
    if (!space)
        return -EINVAL;
    if (!mode_named(space->mode))
        return -EMEDIUMTYPE;
    return lockd_block_key(NULL, path, space->mode, ret_key, size);
}

/* ------------------------------------------------------------------------
 * Direct leases: the lock on the disk itself
 */

/* Who holds byte 0 of fd's file, as lockd_probe() answers; fd is ours. */
static int
probe_fd(int fd, int32_t *ret_pid)
{
    struct flock fl = {.l_type = F_UNLCK};
    int r = lease_lock(fd, F_OFD_GETLK, F_WRLCK, &fl);

    if (r < 0)
        return r;
    if (ret_pid)
        *ret_pid = fl.l_type == F_UNLCK || fl.l_pid < 0 ? 0 : fl.l_pid;
    return fl.l_type == F_UNLCK   ? LOCKD_FREE
           : fl.l_type == F_RDLCK ? LOCKD_SHARED
                                  : LOCKD_EXCLUSIVE;
}

/*
 * Open disk path for a direct lease of mode: a regular file or a block
 * device, looked at through an O_PATH descriptor first, so that nothing
 * else (a character device, which may act on open; a FIFO) is ever opened.
 * Returns the fd, -EISDIR, -ENXIO (another kind of file), or open's error.
 */
static int
direct_open(const char *path, int mode, struct stat *ret_st)
{
    /* An exclusive lease is a write lock, which needs a writable fd. */
    int flags =
        (mode == LOCKD_SHARED ? O_RDONLY : O_RDWR) | O_CLOEXEC | O_NOCTTY | O_NONBLOCK;

    return open_looked(AT_FDCWD, path, flags, 1, ret_st);
}

LOCKD_API int
lockd_acquire_direct(size_t n, const char *const *paths, const int *modes, int timeout_ms,
                     lockd_lease **ret_lease)
{
    char(*keys)[LOCKD_KEY_SIZE] = NULL;
    const char **kp = NULL;
    struct stat *st = NULL;
    lockd_lease *l = NULL;
    int64_t deadline;
    size_t i, j;
    int r = 0;

    if (!paths || !ret_lease || n == 0 || n > LOCKD_ACQUIRE_MAX || timeout_ms < -1)
        return -EINVAL;
    keys = calloc(n, sizeof(*keys));
    kp = calloc(n, sizeof(*kp));
    if (!keys || !kp)
        r = -ENOMEM;
    /* A direct lease's key is its path's verbatim key: the same string
     * names it in the helper's listing as in a verbatim lockspace. */
    for (i = 0; i < n && r == 0; i++) {
        if (!paths[i] || paths[i][0] != '/')
            r = -EINVAL;
        else
            r = lockd_key_resource(paths[i], strlen(paths[i]), keys[i]);
        kp[i] = keys[i];
    }
    if (r == 0)
        r = lease_plan(n, kp, modes, 0, &l);
    free(kp);
    if (r < 0) {
        free(keys);
        return r;
    }
    st = calloc(l->n, sizeof(*st));
    for (i = 0; i < l->n && st; i++) {
        size_t k;

        for (k = 0; l->slot[k] != i; k++) /* every entry has a first caller's key */
            ;
        if (!(l->ent[i].path = strdup(paths[k])))
            break;
    }
    free(keys);
    l->direct = 1;
    if (!st || i < l->n) {
        free(st);
        (void)lockd_lease_release(l);
        return -ENOMEM;
    }
    deadline = timeout_ms == LOCKD_FOREVER ? -1
               : timeout_ms == LOCKD_TRY   ? 0
                                           : now_ns() + (int64_t)timeout_ms * 1000000;
    /* In key order, as lockd_acquire(): no two callers that spell their
     * disks alike wait on each other. */
    for (i = 0; i < l->n; i++) {
        r = direct_open(l->ent[i].path, l->ent[i].mode, &st[i]);
        for (j = 0; j < i && r >= 0; j++)
            if (st[j].st_dev == st[i].st_dev && st[j].st_ino == st[i].st_ino) {
                safe_close(r);
                r = -EINVAL; /* one disk under two names: it would exclude itself */
            }
        if (r < 0)
            break;
        l->ent[i].fd = r;
        r = lease_lock_wait(l->ent[i].fd,
                            l->ent[i].mode == LOCKD_SHARED ? F_RDLCK : F_WRLCK, deadline);
        if (r < 0)
            break;
    }
    free(st);
    if (r < 0) {
        (void)lockd_lease_release(l);
        return r;
    }
    *ret_lease = l;
    return 0;
}

LOCKD_API const char *
lockd_lease_path(const lockd_lease *lease, size_t i)
{
    return lease && i < lease->n ? lease->ent[i].path : NULL;
}

LOCKD_API int
lockd_probe_direct(const char *path, int32_t *ret_pid)
{
    struct stat st;
    int fd, r;

    if (!path || path[0] != '/')
        return -EINVAL;
    fd = direct_open(path, LOCKD_SHARED, &st);
    if (fd < 0)
        return fd;
    r = probe_fd(fd, ret_pid);
    safe_close(fd);
    return r;
}

LOCKD_API int
lockd_lease_release(lockd_lease *lease)
{
    size_t i;
    int r = 0, q;

    if (!lease)
        return 0;
    for (i = 0; i < lease->n; i++) {
        free(lease->ent[i].path);
        if (lease->ent[i].fd < 0)
            continue;
        q = lease_drop(lease->ent[i].fd);
        if (q < 0 && r == 0)
            r = q;
    }
    space_unref(lease->space);
    free(lease);
    return r;
}

LOCKD_API void
lockd_lease_forget(lockd_lease *lease)
{
    size_t i;

    if (!lease)
        return;
    for (i = 0; i < lease->n; i++) {
        free(lease->ent[i].path);
        safe_close(lease->ent[i].fd);
    }
    space_unref(lease->space);
    free(lease);
}

LOCKD_API size_t
lockd_lease_count(const lockd_lease *lease)
{
    return lease ? lease->n : 0;
}

LOCKD_API int
lockd_lease_index(const lockd_lease *lease, size_t i)
{
    return lease && i < lease->given ? (int)lease->slot[i] : -EINVAL;
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

/* Whether a /proc/self/fdinfo text lists an OFD lock with want (" READ "
 * or " WRITE ") on byte 0, length 1 (fs/locks.c, lock_get_status: "lock:\t1:
 * OFDLCK ADVISORY  WRITE -1 fe:00:12 0 0").  lockd-helper uses it too. */
static int
fdinfo_has_lock(const char *buf, const char *want)
{
    const char *line;

    for (line = strstr(buf, "lock:\t"); line; line = strstr(line + 1, "lock:\t")) {
        const char *end = strchr(line, '\n');
        size_t len = end ? (size_t)(end - line) : strlen(line);

        if (memmem(line, len, " OFDLCK ", 8) && memmem(line, len, want, strlen(want)) &&
            len > 4 && memcmp(line + len - 4, " 0 0", 4) == 0)
            return 1;
    }
    return 0;
}

/* F_OFD_GETLK of byte 0 through fd, asking for type: the type of a
 * conflicting lock of another description (F_UNLCK: none), or -errno. */
static int
getlk(int fd, short type)
{
    struct flock fl = {.l_type = type, .l_whence = SEEK_SET, .l_len = 1};

    return fcntl(fd, F_OFD_GETLK, &fl) < 0 ? -errno : fl.l_type;
}

/* Read /proc/<pid>/fdinfo/<fd> ("self" for pid 0) into buf (NUL-ended). */
static int
fdinfo_of(int32_t pid, int fd, char *buf, size_t size)
{
    char path[64];
    ssize_t n;
    int f, r;

    if (pid)
        snprintf(path, sizeof(path), "/proc/%d/fdinfo/%d", (int)pid, fd);
    else
        snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", fd);
    f = open(path, O_RDONLY | O_CLOEXEC);
    if (f < 0)
        return errno == ENOENT ? -EBADF : -errno;
    do
        n = read(f, buf, size - 1);
    while (n < 0 && errno == EINTR);
    r = n < 0 ? -errno : 0;
    close(f);
    if (r == 0)
        buf[n] = '\0';
    return r;
}

LOCKD_API int
lockd_check_fd_of(int32_t pid, int fd, int mode)
{
    char path[64], buf[4096];
    struct statfs sfs;
    int r;

    if (pid <= 0 || fd < 0 || (mode != LOCKD_EXCLUSIVE && mode != LOCKD_SHARED))
        return -EINVAL;
    snprintf(path, sizeof(path), "/proc/%d/fd/%d", (int)pid, fd);
    if (statfs(path, &sfs) < 0)
        return errno == ENOENT ? -EBADF : -errno;
    if (!fs_is_local((long)sfs.f_type))
        return -EREMOTE;
    r = fdinfo_of(pid, fd, buf, sizeof(buf));
    if (r < 0)
        return r;
    return fdinfo_has_lock(buf, mode == LOCKD_SHARED ? " READ " : " WRITE ") ? 0 : -ENOLCK;
}

LOCKD_API int
lockd_check_fd(int fd, int mode)
{
    const char *want = mode == LOCKD_SHARED ? " READ " : " WRITE ";
    char path[40], buf[4096];
    struct statfs sfs;
    int other, r;

    if (fd < 0 || (mode != LOCKD_EXCLUSIVE && mode != LOCKD_SHARED))
        return -EINVAL;
    r = fdinfo_of(0, fd, buf, sizeof(buf));
    if (r < 0)
        return r;
    if (fstatfs(fd, &sfs) < 0)
        return -errno;
    if (fs_is_local((long)sfs.f_type))
        return fdinfo_has_lock(buf, want) ? 0 : -ENOLCK;
    if ((unsigned long)sfs.f_type == 0x6969) { /* NFS */
        if (!fdinfo_has_lock(buf, want))
            return -ENOLCK;
        /* The client keeps its record even when it lost the lock's state:
         * the server is asked for another host's lock (LOCKT), which is
         * the loss that matters.  Never a re-assert: it could take again a
         * lock just let go. */
        r = getlk(fd, mode == LOCKD_SHARED ? F_RDLCK : F_WRLCK);
        if (r < 0 || r != F_UNLCK)
            return r < 0 ? r : -EBUSY;
        return 0;
    }
    if (fdinfo_has_lock(buf, want))
        return 0; /* a filesystem whose locks the kernel keeps */
    if ((unsigned long)sfs.f_type != 0x65735546) /* not FUSE: no record, no lock */
        return -ENOLCK;
    /* A FUSE server keeps the lock (GlusterFS).  It never names the asker's
     * own lock: through fd it names another holder's, and through a second
     * open file description of the file anybody's. */
    r = getlk(fd, F_WRLCK);
    if (r < 0)
        return r;
    if (r == F_WRLCK || (mode == LOCKD_EXCLUSIVE && r != F_UNLCK))
        return -EBUSY;
    snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
    other = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (other < 0)
        return -errno;
    r = getlk(other, F_WRLCK);
    close(other);
    if (r < 0)
        return r;
    if (r == F_UNLCK)
        return -ENOLCK;
    return (r == F_WRLCK) == (mode == LOCKD_EXCLUSIVE) ? 0 : -EBUSY;
}

LOCKD_API int
lockd_lease_check(const lockd_lease *lease, size_t i)
{
    if (!lease || i >= lease->n)
        return -EINVAL;
    return lockd_check_fd(lease->ent[i].fd, lease->ent[i].mode);
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
    struct stat st;
    int fd, r;

    if (!space || !space_key_valid(space, key))
        return -EINVAL;
    fd = open_looked(space->dirfd, key, PEEK_OPEN_FLAGS, 0, &st);
    if (fd == -ENOENT) {
        if (ret_pid)
            *ret_pid = 0;
        return LOCKD_FREE;
    }
    if (fd < 0)
        return fd;
    r = probe_fd(fd, ret_pid);
    safe_close(fd);
    return r;
}

/* ------------------------------------------------------------------------
 * Garbage collection
 */

/* What gc_one() did with one name. */
enum { GC_GONE, GC_REMOVED, GC_HELD, GC_YOUNG, GC_OTHER };

/* Whether the file st describes was created or written less than
 * min_age_ms ago (by this host's clock; a time in the future is young). */
static int
gc_young(const struct stat *st, uint32_t min_age_ms)
{
    struct timespec now;
    int64_t t, m;

    if (min_age_ms == 0)
        return 0;
    clock_gettime(CLOCK_REALTIME, &now);
    t = (int64_t)st->st_ctim.tv_sec * 1000000000 + st->st_ctim.tv_nsec;
    m = (int64_t)st->st_mtim.tv_sec * 1000000000 + st->st_mtim.tv_nsec;
    t = m > t ? m : t;
    return (int64_t)now.tv_sec * 1000000000 + now.tv_nsec - t <
           (int64_t)min_age_ms * 1000000;
}

/* Remove the lease file key if nobody holds it, it is at least min_age_ms
 * old, and its name still refers to the inode we locked.  Returns a GC_*
 * value or -errno. */
static int
gc_one(int dirfd, int remote, const char *key, uint32_t min_age_ms)
{
    struct stat st;
    int fd, r;

    fd = lease_open(dirfd, key, &st);
    if (fd == -ENOENT || fd == -ESTALE)
        return GC_GONE;
    /* Not a lease gc may judge (planted, or another user's 0600 file):
     * leave it, and go on with the rest. */
    if (fd == -ELOOP || fd == -EISDIR || fd == -ENXIO || fd == -EACCES || fd == -EPERM)
        return GC_OTHER;
    if (fd < 0)
        return fd;
    r = lease_lock(fd, F_OFD_SETLK, F_WRLCK, NULL);
    if (r == -EAGAIN) {
        safe_close(fd);
        return GC_HELD;
    }
    /* Judged once it is known not to be held, so that "held" counts
     * every held lease, young or old. */
    if (r == 0 && gc_young(&st, min_age_ms)) {
        (void)lease_drop(fd);
        return GC_YOUNG;
    }
    if (r == 0)
        r = lease_current(dirfd, key, fd, &st, remote);
    if (r == -ESTALE)
        r = 0; /* unlinked on another host meanwhile */
    /* lockd creators wait for our exclusive index lock, so none can re-link
     * the name to a new inode between this check and the unlink.  A virtlockd
     * peer takes no index lock; only one that itself holds a lock on an
     * unlinked file (it never checks) could race us here. */
    if (r == 1 && RETRY_EINTR(LOCKD_SYS_UNLINKAT(dirfd, key, 0)) < 0)
        r = errno == ENOENT ? 0 : negerrno();
    (void)lease_drop(fd);
    return r < 0 ? r : r == 1 ? GC_REMOVED : GC_GONE;
}

/* The number of names in d that gc would look at; d is rewound. */
static uint64_t
gc_count(const lockd_space *space, DIR *d)
{
    struct dirent *de;
    uint64_t n = 0;

    while ((de = readdir(d)))
        n += space_key_valid(space, de->d_name);
    rewinddir(d);
    return n;
}

struct gc_run {
    uint32_t min_age_ms;
    lockd_gc_progress_fn progress;
    void *userdata;
    uint64_t total, count[GC_OTHER + 1];
};

static int
gc_dir(lockd_space *space, int ifd, DIR *d, struct gc_run *g)
{
    int64_t batch_end = 0;
    unsigned batch = 0;
    uint64_t seen = 0;
    struct dirent *de;
    int entered = 0, r = 0;

    while ((errno = 0, de = readdir(d))) {
        if (!space_key_valid(space, de->d_name))
            continue;
        /* The index is held for one batch at a time: creators waiting for
         * it go between two batches (index_gc_enter()). */
        if (entered && (++batch >= GC_BATCH_MAX || now_ns() >= batch_end)) {
            index_gc_leave(ifd);
            entered = 0;
        }
        if (!entered) {
            r = index_gc_enter(ifd);
            if (r < 0)
                return r;
            entered = 1, batch = 0;
            batch_end = now_ns() + GC_BATCH_NS;
        }
        r = gc_one(space->dirfd, space->remote, de->d_name, g->min_age_ms);
        if (r < 0)
            return r;
        g->count[r]++;
        if (++seen % 1024 == 0 && g->progress) {
            /* Never call out with the index held: a callback that stalls
             * (a terminal held by ^S) would stall every creator. */
            if (entered)
                index_gc_leave(ifd);
            entered = 0;
            if ((r = g->progress(seen, g->total, g->userdata)) != 0)
                return r;
        }
    }
    return errno ? negerrno() : 0;
}

static int gc_compat_progress(uint64_t done, uint64_t total, void *userdata);

static int
gc_run(lockd_space *space, struct gc_run *g)
{
    DIR *d = NULL;
    int ifd = -1, lfd, r;

    if (!space)
        return -EINVAL;
    if (space->readonly)
        return -EBADF;
    ifd = index_open(space->dirfd);
    if (ifd < 0)
        return ifd;
    /* One gc at a time: two would hand INTENT_BYTE back and forth between
     * their batches and keep polling creators out. */
    r = byte_lock(ifd, F_OFD_SETLKW, F_WRLCK, GC_BYTE, NULL);
    if (r < 0)
        goto out;
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
    /* Names only, no stat: cheap beside the locking pass that follows.
     * lockd_gc()'s callback has no use for it. */
    if (g->progress && g->progress != gc_compat_progress)
        g->total = gc_count(space, d);
    r = gc_dir(space, ifd, d, g);
out:
    if (d)
        closedir(d);
    safe_close(ifd);
    return r;
}

LOCKD_API int
lockd_gc_ex(lockd_space *space, uint32_t min_age_ms, lockd_gc_progress_fn progress,
            void *userdata, uint64_t *ret_removed, uint64_t *ret_held,
            uint64_t *ret_young, uint64_t *ret_other)
{
    struct gc_run g = {
        .min_age_ms = min_age_ms, .progress = progress, .userdata = userdata};
    int r = gc_run(space, &g);

    if (r != 0)
        return r;
    if (ret_removed)
        *ret_removed = g.count[GC_REMOVED];
    if (ret_held)
        *ret_held = g.count[GC_HELD];
    if (ret_young)
        *ret_young = g.count[GC_YOUNG];
    if (ret_other)
        *ret_other = g.count[GC_OTHER];
    return 0;
}

/* lockd_gc()'s callback, called through lockd_gc_ex()'s. */
struct gc_compat {
    lockd_progress_fn fn;
    void *userdata;
};

static int
gc_compat_progress(uint64_t done, uint64_t total, void *userdata)
{
    struct gc_compat *c = userdata;

    (void)total;
    return c->fn(done, c->userdata);
}

LOCKD_API int
lockd_gc(lockd_space *space, lockd_progress_fn progress, void *userdata,
         uint64_t *ret_removed, uint64_t *ret_kept)
{
    struct gc_compat c = {.fn = progress, .userdata = userdata};
    struct gc_run g = {.progress = progress ? gc_compat_progress : NULL, .userdata = &c};
    int r = gc_run(space, &g);

    if (r != 0)
        return r;
    if (ret_removed)
        *ret_removed = g.count[GC_REMOVED];
    /* As before lockd_gc_ex(): everything looked at and left in place. */
    if (ret_kept)
        *ret_kept = g.count[GC_GONE] + g.count[GC_HELD] + g.count[GC_OTHER];
    return 0;
}

/* ------------------------------------------------------------------------
 * The helper protocol, version 1
 *
 * This section is the one place the wire format is written down, and the
 * only code that reads or writes it: the client calls below use it, and
 * lockd-helper.c builds this file into itself to parse requests and write
 * replies.  lockd-protocol(7) is the reference for people; lockd-helper(8)
 * says what the helper does with each request.
 *
 * Transport: a SOCK_SEQPACKET UNIX socket, so each message arrives whole or
 * not at all and a peer's disconnect is seen at once.  A message is a header
 * and a body of at most PROTO_BODY_MAX bytes, in host byte order (the socket
 * never leaves the host).  File descriptors travel only as SCM_RIGHTS on the
 * message that announces them in hdr.nfds, exactly that many, at most
 * PROTO_FDS_MAX; a message with any other count is refused and its fds
 * closed.
 *
 *   header (24 bytes)
 *     u32 magic    PROTO_MAGIC
 *     u16 version  PROTO_VERSION; any other is answered -EPROTONOSUPPORT
 *                  (version 1 is the first: a later helper will answer the
 *                  version before its own too)
 *     u16 type     PROTO_* below
 *     u32 serial   chosen by the client, echoed by the reply; 0 in a notice
 *     i32 status   replies: 0 or -errno; requests: 0
 *     u32 nfds     fds attached
 *     u32 len      body bytes that follow
 *
 *   Strings are u16 length + bytes, no NUL, no NUL inside.  Keys travel as
 *   32 raw bytes.  A uuid is 16 raw bytes (all zero: none).
 *
 *   REGISTER  i32 pid, uuid, str name [, u8 on_loss, str command]
 *                                              nfds 0, or 1: a pidfd of pid
 *     reply   (empty).  The tail is the action on lock loss
 *             (LOCKD_ON_LOSS_*; command not empty exactly for EXEC); a
 *             REGISTER without it leaves the action as it was (a new
 *             owner's: KILL)
 *   HANDOFF   i32 pid, u16 count, count x { u8 mode, key, str disk }
 *                                              nfds == count, fd i = lease i
 *     reply   count x u64 lease id
 *   RELEASE   i32 pid, u16 count, count x u64 lease id   (count 0: all)
 *     reply   u32 released
 *   NOTICE    as RELEASE, but count > 0 (a late "all" would free newer
 *             leases: the helper refuses it and logs so); serial 0; no reply
 *   LIST      i32 pid (0: any), u8 has_key, key, u64 cursor (0: start)
 *     reply   u64 next cursor (0: done), u16 count, count x { u64 lease id,
 *             u8 mode, key, i32 pid, u32 uid, uuid, str name, str disk }
 *   OWNERS    u64 cursor
 *     reply   u64 next cursor, u16 count, count x { i32 pid, u32 uid, uuid,
 *             str name, u32 leases }
 *   STATUS    (empty)
 *     reply   u64 owners, u64 leases, u64 stored
 *   STOP      u8 force
 *     reply   (empty); root only (-EPERM); -EBUSY if owners hold leases
 *             and force is 0.  After the reply the helper releases every
 *             lease and exits 0.
 *   FORGET    as RELEASE, but the helper closes its copies without
 *             unlocking: a client takes back a hand-over it still holds
 *             itself (lockd_conn_handoff()'s all-or-nothing); count 0
 *             forgets nothing
 *     reply   u32 released
 *
 * A reply with status < 0 has an empty body.  A peer that sends anything
 * else (a short or oversized message, a bad magic, an unknown type, a body
 * that does not parse to its exact length) gets -EPROTO, or is dropped.
 */
#define PROTO_MAGIC     0x31646b6cu /* "lkd1" in memory on a little-endian host */
#define PROTO_VERSION   1
#define PROTO_HDR_SIZE  24
#define PROTO_BODY_MAX  (65536 - PROTO_HDR_SIZE)
#define PROTO_FDS_MAX   253 /* SCM_MAX_FD, the kernel's limit per message */
#define PROTO_KEY_BYTES 32
#define PROTO_UUID_BYTES 16
#define PROTO_FDS_LOST  ((size_t)-1) /* proto_recv(): the fds did not fit */

enum {
    PROTO_REGISTER = 1,
    PROTO_HANDOFF = 2,
    PROTO_RELEASE = 3,
    PROTO_NOTICE = 4,
    PROTO_LIST = 5,
    PROTO_OWNERS = 6,
    PROTO_STATUS = 7,
    PROTO_FORGET = 8,
    PROTO_STOP = 9,
    PROTO_STUCK = 10,
    PROTO_SPACE = 11,
};

/* The most text a STUCK reply carries. */
#define PROTO_STUCK_TEXT_MAX 8192

struct proto_hdr {
    uint32_t magic;
    uint16_t version;
    uint16_t type;
    uint32_t serial;
    int32_t status;
    uint32_t nfds;
    uint32_t len;
};

/* A bounded reader over a received body.  Any read past the end sets bad,
 * so a decoder checks once at the end, and "parsed to its exact length" is
 * rd->bad == 0 && rd->left == 0. */
struct proto_rd {
    const uint8_t *p;
    size_t left;
    int bad;
};

static const uint8_t *
rd_take(struct proto_rd *rd, size_t n)
{
    const uint8_t *p = rd->p;

    if (rd->bad || rd->left < n) {
        rd->bad = 1;
        return NULL;
    }
    rd->p += n;
    rd->left -= n;
    return p;
}

#define RD_INT(name, type)                                                          \
    static type name(struct proto_rd *rd)                                          \
    {                                                                               \
        const uint8_t *p = rd_take(rd, sizeof(type));                               \
        type v = 0;                                                                 \
                                                                                    \
        if (p)                                                                      \
            memcpy(&v, p, sizeof(v));                                               \
        return v;                                                                   \
    }
RD_INT(rd_u8, uint8_t)
RD_INT(rd_u16, uint16_t)
RD_INT(rd_u32, uint32_t)
RD_INT(rd_i32, int32_t)
RD_INT(rd_u64, uint64_t)

/* A string: returns its bytes (not NUL-terminated) and length; NUL inside
 * or longer than max sets bad. */
static const char *
rd_str(struct proto_rd *rd, size_t max, uint16_t *ret_len)
{
    uint16_t len = rd_u16(rd);
    const char *s = (const char *)rd_take(rd, len);

    if (s && (len > max || memchr(s, '\0', len)))
        rd->bad = 1;
    *ret_len = rd->bad ? 0 : len;
    return rd->bad ? "" : s;
}

/* A writer into a fixed buffer; overflow sets bad. */
struct proto_wr {
    uint8_t *buf;
    size_t len, cap;
    int bad;
};

static void
wr_put(struct proto_wr *wr, const void *p, size_t n)
{
    if (wr->bad || wr->cap - wr->len < n) {
        wr->bad = 1;
        return;
    }
    memcpy(wr->buf + wr->len, p, n);
    wr->len += n;
}

#define WR_INT(name, type)                                                          \
    static void name(struct proto_wr *wr, type v)                                  \
    {                                                                               \
        wr_put(wr, &v, sizeof(v));                                                  \
    }
WR_INT(wr_u8, uint8_t)
WR_INT(wr_u16, uint16_t)
WR_INT(wr_u32, uint32_t)
WR_INT(wr_i32, int32_t)
WR_INT(wr_u64, uint64_t)

static void
wr_str(struct proto_wr *wr, const char *s, size_t len)
{
    if (len > UINT16_MAX) {
        wr->bad = 1;
        return;
    }
    wr_u16(wr, (uint16_t)len);
    wr_put(wr, s, len);
}

/* A C string, or NULL for an empty one. */
static void
wr_cstr(struct proto_wr *wr, const char *s)
{
    wr_str(wr, s ? s : "", s ? strlen(s) : 0);
}

/* Start a message in wr (whose buffer holds at least PROTO_HDR_SIZE bytes);
 * proto_finish() fills in the length. */
static void
proto_begin(struct proto_wr *wr, uint16_t type, uint32_t serial, int32_t status,
            uint32_t nfds)
{
    wr->len = 0;
    wr->bad = 0;
    wr_u32(wr, PROTO_MAGIC);
    wr_u16(wr, PROTO_VERSION);
    wr_u16(wr, type);
    wr_u32(wr, serial);
    wr_i32(wr, status);
    wr_u32(wr, nfds);
    wr_u32(wr, 0);
}

static int
proto_finish(struct proto_wr *wr)
{
    uint32_t body = (uint32_t)(wr->len - PROTO_HDR_SIZE);

    if (wr->bad || body > PROTO_BODY_MAX)
        return -EMSGSIZE;
    memcpy(wr->buf + 20, &body, sizeof(body));
    return 0;
}

static void
hex_to_key(const char *hex, uint8_t *ret_bytes)
{
    size_t i;

    for (i = 0; i < PROTO_KEY_BYTES; i++) {
        int hi = (unsigned char)hex[2 * i], lo = (unsigned char)hex[2 * i + 1];

        hi = hi <= '9' ? hi - '0' : hi - 'a' + 10;
        lo = lo <= '9' ? lo - '0' : lo - 'a' + 10;
        ret_bytes[i] = (uint8_t)(hi << 4 | lo);
    }
}

/* uuid text (8-4-4-4-12 hex) to 16 bytes; NULL or "" is all zero. */
static int
uuid_parse(const char *text, uint8_t *ret)
{
    size_t i, j = 0;

    memset(ret, 0, PROTO_UUID_BYTES);
    if (!text || !*text)
        return 0;
    for (i = 0; text[i] && j < 2 * PROTO_UUID_BYTES; i++) {
        int c = (unsigned char)text[i], v;

        if (c == '-' && (i == 8 || i == 13 || i == 18 || i == 23))
            continue;
        if (c >= '0' && c <= '9')
            v = c - '0';
        else if (c >= 'a' && c <= 'f')
            v = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F')
            v = c - 'A' + 10;
        else
            return -EINVAL;
        ret[j / 2] |= (uint8_t)(j % 2 ? v : v << 4);
        j++;
    }
    return j == 2 * PROTO_UUID_BYTES && text[i] == '\0' && i == 36 ? 0 : -EINVAL;
}

/* 16 bytes to text; all zero gives "". ret holds 37 bytes. */
static void
uuid_format(const uint8_t *u, char *ret)
{
    static const uint8_t zero[PROTO_UUID_BYTES];

    if (memcmp(u, zero, sizeof(zero)) == 0) {
        ret[0] = '\0';
        return;
    }
    snprintf(ret, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
             u[0], u[1], u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11], u[12],
             u[13], u[14], u[15]);
}

/* Whether an on-loss action (LOCKD_ON_LOSS_*, or -1: unchanged) runs a
 * command, which it then needs; the others take none. */
static int
on_loss_has_hook(int on_loss)
{
    return on_loss == LOCKD_ON_LOSS_EXEC || on_loss == LOCKD_ON_LOSS_EXEC_OR_KILL;
}

/* Parse a received message's header: 0 with the body in ret_body, or
 * -EPROTO.  nfds is how many fds actually arrived.  *ret is filled in as far
 * as the bytes go even on error, so a reply can still echo the serial. */
static int
proto_parse_hdr(const uint8_t *buf, size_t len, size_t nfds, struct proto_hdr *ret,
                struct proto_rd *ret_body)
{
    struct proto_rd rd = {buf, len, 0};
    struct proto_hdr h;

    memset(ret, 0, sizeof(*ret));
    h.magic = rd_u32(&rd);
    h.version = rd_u16(&rd);
    h.type = rd_u16(&rd);
    h.serial = rd_u32(&rd);
    h.status = rd_i32(&rd);
    h.nfds = rd_u32(&rd);
    h.len = rd_u32(&rd);
    if (!rd.bad)
        *ret = h;
    if (rd.bad || h.magic != PROTO_MAGIC || h.len != rd.left || h.len > PROTO_BODY_MAX ||
        h.nfds != nfds || h.nfds > PROTO_FDS_MAX)
        return -EPROTO;
    *ret_body = rd;
    return 0;
}

/* Close every fd in fds[0..n-1]. */
static void
close_all(const int *fds, size_t n)
{
    size_t i;

    for (i = 0; i < n; i++)
        safe_close(fds[i]);
}

/* Close fds a peer sent that are not kept.  The helper defines
 * LOCKD_RECEIVED_CLOSE before including this file: a peer's fd may live on
 * a filesystem whose close(2) blocks (lockd-helper-fs.h). */
#ifndef LOCKD_RECEIVED_CLOSE
#define LOCKD_RECEIVED_CLOSE(fd) safe_close(fd)
#endif

static void
received_close_all(const int *fds, size_t n)
{
    size_t i;

    for (i = 0; i < n; i++)
        LOCKD_RECEIVED_CLOSE(fds[i]);
}

/*
 * Send one message with fds.  MSG_NOSIGNAL: a helper that went away is
 * -EPIPE, not a SIGPIPE that kills the manager.
 */
static int
proto_send(int sock, const void *buf, size_t len, const int *fds, size_t nfds)
{
    union {
        char buf[CMSG_SPACE(sizeof(int) * PROTO_FDS_MAX)];
        struct cmsghdr align;
    } ctl;
    struct iovec iov = {(void *)buf, len};
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
    ssize_t n;

    assert(nfds <= PROTO_FDS_MAX);
    if (nfds > 0) {
        struct cmsghdr *c;

        memset(&ctl, 0, sizeof(ctl));
        mh.msg_control = ctl.buf;
        mh.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
        c = CMSG_FIRSTHDR(&mh);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
        memcpy(CMSG_DATA(c), fds, sizeof(int) * nfds);
    }
    do
        n = LOCKD_SYS_SENDMSG(sock, &mh, MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    if (n < 0)
        return errno == EAGAIN ? -ETIMEDOUT : negerrno();
    return (size_t)n == len ? 0 : -EPROTO;
}

/*
 * Receive one message into buf (cap bytes) and up to PROTO_FDS_MAX fds.
 * Returns the message length (0: the peer hung up), or -errno.  A message
 * cut short (MSG_TRUNC) is -EMSGSIZE.  If its fds did not all fit
 * (MSG_CTRUNC: we are out of descriptors, or the peer sent too many), those
 * that arrived are closed and *ret_nfds is PROTO_FDS_LOST, so the caller can
 * still answer the request with -EMFILE.  cloexec is MSG_CMSG_CLOEXEC or 0:
 * the helper keeps lease fds across its re-exec, so it receives them without.
 */
/*
 * A received fd is the sender's choice, and closing some blocks: a TCP
 * socket with SO_LINGER set and data it cannot send holds close() until
 * the linger time runs out (found by attack: one message froze the
 * helper's only thread, and with it every guest's release).  Lingering is
 * turned off on every socket received, so that a close never waits.
 */
static void
fds_defuse(const int *fds, size_t n)
{
    static const struct linger off = {0, 0};
    size_t i;

    /* Any fd: a non-socket answers ENOTSOCK without its filesystem being
     * asked (an fstat(2) would wait for a stalled FUSE daemon). */
    for (i = 0; i < n; i++)
        (void)setsockopt(fds[i], SOL_SOCKET, SO_LINGER, &off, sizeof(off));
}

static ssize_t
proto_recv(int sock, void *buf, size_t cap, int *ret_fds, size_t *ret_nfds, int cloexec)
{
    union {
        char buf[CMSG_SPACE(sizeof(int) * PROTO_FDS_MAX)];
        struct cmsghdr align;
    } ctl;
    struct iovec iov = {buf, cap};
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.buf,
                        .msg_controllen = sizeof(ctl.buf)};
    struct cmsghdr *c;
    size_t nfds = 0;
    ssize_t n;

    do
        n = LOCKD_SYS_RECVMSG(sock, &mh, cloexec);
    while (n < 0 && errno == EINTR);
    if (n < 0)
        return errno == EAGAIN ? -ETIMEDOUT : negerrno();
    for (c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
        size_t k;

        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
            continue;
        k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        if (nfds + k > PROTO_FDS_MAX) {
            /* Cannot happen with one SCM_RIGHTS (SCM_MAX_FD), but a second
             * control message could; close what does not fit. */
            int extra[PROTO_FDS_MAX];

            memcpy(extra, CMSG_DATA(c), sizeof(int) * k);
            fds_defuse(extra, k);
            received_close_all(extra, k);
            mh.msg_flags |= MSG_CTRUNC;
            continue;
        }
        memcpy(ret_fds + nfds, CMSG_DATA(c), sizeof(int) * k);
        nfds += k;
    }
    fds_defuse(ret_fds, nfds);
    /* An empty message (or the end of the stream) is never a lockd message:
     * the fds it carried must not stay open for nobody (found by
     * fuzz-dispatch: each empty message with fds leaked them in the helper,
     * a lease's among them). */
    if ((mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) || n == 0) {
        received_close_all(ret_fds, nfds);
        nfds = 0;
    }
    if (mh.msg_flags & MSG_TRUNC)
        return -EMSGSIZE;
    *ret_nfds = (mh.msg_flags & MSG_CTRUNC) ? PROTO_FDS_LOST : nfds;
    return n;
}

/* The server side of the codec is compiled only into lockd-helper (and the
 * fuzz target), which define LOCKD_PROTO_SERVER and include this file. */
#ifdef LOCKD_PROTO_SERVER

/* A decoded request.  Pointers point into the received buffer. */
struct proto_item {
    uint8_t mode;
    const uint8_t *key; /* PROTO_KEY_BYTES */
    const char *disk;   /* not NUL-terminated */
    uint16_t disk_len;
};

struct proto_req {
    struct proto_hdr hdr;
    int32_t pid;                 /* all but OWNERS and STATUS */
    const uint8_t *uuid;         /* REGISTER */
    const char *name;            /* REGISTER, not NUL-terminated */
    uint16_t name_len;
    uint8_t has_on_loss, on_loss; /* REGISTER's optional tail */
    const char *command;          /* its hook, not NUL-terminated */
    uint16_t command_len;
    uint16_t count;              /* HANDOFF items, RELEASE/NOTICE/FORGET ids */
    const uint8_t *ids;          /* RELEASE/NOTICE/FORGET: count x u64, unaligned */
    const uint8_t *key;          /* LIST: NULL for any, else key_buf */
    uint64_t cursor;             /* LIST, OWNERS */
    uint8_t force;               /* STOP */
    uint8_t named;               /* SPACE: lvm or scsi, files named after devices */
    uint8_t key_buf[PROTO_KEY_BYTES]; /* a copy: replies may reuse the buffer */
    struct proto_item items[PROTO_FDS_MAX]; /* last: not cleared per request */
};

static uint64_t
proto_req_id(const struct proto_req *req, size_t i)
{
    uint64_t v;

    assert(i < req->count);
    memcpy(&v, req->ids + 8 * i, sizeof(v));
    return v;
}

static void
decode_handoff(struct proto_rd *rd, struct proto_req *req)
{
    uint16_t i;

    req->pid = rd_i32(rd);
    req->count = rd_u16(rd);
    if (req->count == 0 || req->count > PROTO_FDS_MAX || req->count != req->hdr.nfds) {
        rd->bad = 1;
        return;
    }
    for (i = 0; i < req->count && !rd->bad; i++) {
        struct proto_item *it = &req->items[i];

        it->mode = rd_u8(rd);
        it->key = rd_take(rd, PROTO_KEY_BYTES);
        it->disk = rd_str(rd, LOCKD_NAME_MAX, &it->disk_len);
        if (it->mode != LOCKD_EXCLUSIVE && it->mode != LOCKD_SHARED)
            rd->bad = 1;
    }
}

static void
decode_body(struct proto_rd *rd, struct proto_req *req)
{
    const uint8_t *p;

    switch (req->hdr.type) {
    case PROTO_REGISTER:
        req->pid = rd_i32(rd);
        req->uuid = rd_take(rd, PROTO_UUID_BYTES);
        req->name = rd_str(rd, LOCKD_OWNER_NAME_MAX, &req->name_len);
        rd->bad |= req->hdr.nfds > 1;
        if (rd->left > 0 && !rd->bad) { /* the on-loss action */
            req->has_on_loss = 1;
            req->on_loss = rd_u8(rd);
            req->command = rd_str(rd, LOCKD_COMMAND_MAX, &req->command_len);
            rd->bad |= req->on_loss > LOCKD_ON_LOSS_EXEC_OR_KILL ||
                       on_loss_has_hook(req->on_loss) != (req->command_len > 0);
        }
        break;
    case PROTO_HANDOFF:
        decode_handoff(rd, req);
        break;
    case PROTO_RELEASE:
    case PROTO_NOTICE:
    case PROTO_FORGET:
        req->pid = rd_i32(rd);
        req->count = rd_u16(rd);
        req->ids = rd_take(rd, (size_t)8 * req->count);
        break;
    case PROTO_LIST:
        req->pid = rd_i32(rd);
        req->key = rd_u8(rd) ? req->key_buf : NULL;
        if ((p = rd_take(rd, PROTO_KEY_BYTES)))
            memcpy(req->key_buf, p, PROTO_KEY_BYTES);
        req->cursor = rd_u64(rd);
        rd->bad |= req->pid < 0;
        break;
    case PROTO_OWNERS:
        req->cursor = rd_u64(rd);
        break;
    case PROTO_STATUS:
    case PROTO_STUCK:
    case PROTO_SPACE:
        if (rd->left > 0) { /* the optional flag: names, not keys (lvm, scsi) */
            req->named = rd_u8(rd);
            rd->bad |= req->named != 1 || req->hdr.nfds != 1;
        }
        break;
    case PROTO_STOP:
        req->force = rd_u8(rd);
        break;
    default:
        rd->bad = 1;
    }
    if (req->hdr.type == PROTO_SPACE)
        rd->bad |= req->hdr.nfds > 1; /* none: direct leases */
    else if (req->hdr.type != PROTO_HANDOFF && req->hdr.type != PROTO_REGISTER)
        rd->bad |= req->hdr.nfds != 0;
    if (req->hdr.type != PROTO_LIST && req->hdr.type != PROTO_OWNERS &&
        req->hdr.type != PROTO_STATUS && req->hdr.type != PROTO_STOP &&
        req->hdr.type != PROTO_STUCK && req->hdr.type != PROTO_SPACE)
        rd->bad |= req->pid <= 0;
}

/*
 * Decode a request as the helper received it: len bytes and nfds fds (or
 * PROTO_FDS_LOST).  Returns 0; -EPROTONOSUPPORT for another protocol
 * version; -EMFILE if its fds were lost; -EPROTO for anything malformed.  On
 * error ret->hdr holds what the header said, as far as it could be read, so
 * the reply can echo type and serial (hdr.magic == PROTO_MAGIC tells whether
 * answering makes sense at all).
 */
static int
proto_decode_request(const uint8_t *buf, size_t len, size_t nfds, struct proto_req *ret)
{
    struct proto_rd rd;
    int r;

    memset(ret, 0, offsetof(struct proto_req, items));
    r = proto_parse_hdr(buf, len, nfds == PROTO_FDS_LOST ? 0 : nfds, &ret->hdr, &rd);
    if (nfds == PROTO_FDS_LOST)
        return -EMFILE;
    if (r < 0)
        return r;
    if (ret->hdr.version != PROTO_VERSION)
        return -EPROTONOSUPPORT;
    if (ret->hdr.status != 0 || (ret->hdr.type == PROTO_NOTICE) != (ret->hdr.serial == 0))
        return -EPROTO;
    decode_body(&rd, ret);
    return rd.bad || rd.left ? -EPROTO : 0;
}

#endif /* LOCKD_PROTO_SERVER */

/* ------------------------------------------------------------------------
 * The helper protocol: client calls
 */

#define CONN_TIMEOUT_SEC 30

struct lockd_conn {
    int sock;
    int bound; /* showed the helper a lockspace (PROTO_SPACE): the one below */
    dev_t bound_dev;
    ino_t bound_ino;
    uint64_t bound_mnt; /* the mount it was seen through: a bind mount is another */
    int broken; /* a reply went missing or made no sense: out of step */
    int status_reply; /* the last call's error came from the helper itself */
    int in_place;     /* opened by lockd_conn_open_in(): its memory is the caller's */
    int direct;       /* showed the helper no lockspace: hand-overs are direct leases */
    uint32_t serial;
    uint8_t buf[PROTO_HDR_SIZE + PROTO_BODY_MAX];
};

static int
conn_connect(const char *path)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    struct timeval tv = {.tv_sec = CONN_TIMEOUT_SEC};
    int fd, r;

    if (strlen(path) >= sizeof(sa.sun_path))
        return -ENAMETOOLONG;
    memcpy(sa.sun_path, path, strlen(path) + 1);
    fd = LOCKD_SYS_SOCKET(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return negerrno();
    /* A helper that hangs must not hang the manager forever. */
    (void)setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    (void)setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    do
        r = LOCKD_SYS_CONNECT(fd, (struct sockaddr *)&sa, sizeof(sa));
    while (r < 0 && errno == EINTR);
    if (r < 0) {
        r = negerrno();
        safe_close(fd);
        return r;
    }
    return fd;
}

/* A new connection's state, on its socket sock: nothing shown yet. */
static void
conn_init(lockd_conn *c, int sock, int in_place)
{
    c->sock = sock;
    c->broken = 0;
    c->direct = 0;
    c->bound = 0;
    c->in_place = in_place;
    c->serial = 0;
}

LOCKD_API int
lockd_conn_open(const char *path, lockd_conn **ret_conn)
{
    lockd_conn *c;
    char *def = NULL;
    int r;

    if (!ret_conn || (path && path[0] == '\0'))
        return -EINVAL;
    if (!path) {
        r = lockd_default_socket(&def);
        if (r < 0)
            return r;
        path = def;
    }
    c = malloc(sizeof(*c));
    r = c ? conn_connect(path) : -ENOMEM;
    free(def);
    if (r < 0) {
        free(c);
        return r;
    }
    conn_init(c, r, 0);
    *ret_conn = c;
    return 0;
}

_Static_assert(sizeof(struct lockd_conn) <= LOCKD_CONN_SIZE,
               "LOCKD_CONN_SIZE is too small");

LOCKD_API int
lockd_conn_open_in(void *mem, size_t size, const char *path, lockd_conn **ret_conn)
{
    lockd_conn *c = mem;
    int r;

    /* Only system calls and plain memory: no malloc, no stdio, no locale. */
    if (!mem || size < sizeof(*c) || (uintptr_t)mem % _Alignof(lockd_conn) != 0 ||
        !path || path[0] == '\0' || !ret_conn)
        return -EINVAL;
    r = conn_connect(path);
    if (r < 0)
        return r;
    conn_init(c, r, 1);
    *ret_conn = c;
    return 0;
}

LOCKD_API void
lockd_conn_close(lockd_conn *conn)
{
    if (!conn)
        return;
    safe_close(conn->sock);
    if (!conn->in_place)
        free(conn);
}

/* Start a request in the connection's buffer. */
static void
conn_begin(lockd_conn *c, struct proto_wr *wr, uint16_t type, uint32_t nfds)
{
    wr->buf = c->buf;
    wr->cap = sizeof(c->buf);
    if (++c->serial == 0)
        c->serial = 1;
    proto_begin(wr, type, type == PROTO_NOTICE ? 0 : c->serial, 0, nfds);
}

/*
 * Send the request in wr with fds and wait for its reply: 0 with the reply's
 * body in ret_body (which points into c->buf), the helper's -errno, or a
 * transport error.  A reply that is not the answer to this request is
 * -EPROTO: the connection is then out of step and should be closed.
 */
static int
conn_call_once(lockd_conn *c, struct proto_wr *wr, const int *fds, size_t nfds,
               struct proto_rd *ret_body)
{
    struct proto_hdr req, rep;
    struct proto_rd body;
    int rfds[PROTO_FDS_MAX];
    size_t rn = 0;
    ssize_t n;
    int r;

    r = proto_finish(wr);
    if (r < 0)
        return r;
    memcpy(&req.type, wr->buf + 6, sizeof(req.type));
    memcpy(&req.serial, wr->buf + 8, sizeof(req.serial));
    r = proto_send(c->sock, wr->buf, wr->len, fds, nfds);
    if (r < 0)
        return r;
    n = proto_recv(c->sock, c->buf, sizeof(c->buf), rfds, &rn, MSG_CMSG_CLOEXEC);
    if (n < 0)
        return (int)n;
    if (n == 0)
        return -ECONNRESET;
    if (rn == PROTO_FDS_LOST)
        return -EPROTO; /* replies carry no fds */
    close_all(rfds, rn);
    r = proto_parse_hdr(c->buf, (size_t)n, rn, &rep, &body);
    if (r < 0 || rn != 0)
        return -EPROTO;
    if (rep.version != PROTO_VERSION)
        return rep.status < 0 ? -EPROTONOSUPPORT : -EPROTO;
    if (rep.type != req.type || rep.serial != req.serial)
        return -EPROTO;
    if (rep.status < 0) {
        c->status_reply = rep.status >= -4095;
        return c->status_reply ? rep.status : -EPROTO;
    }
    *ret_body = body;
    return 0;
}

/*
 * A call whose reply was lost (timeout) or made no sense leaves the
 * connection out of step: a late reply would be taken for the next
 * request's.  So the connection is shut down and every later call on it
 * fails with -ENOTCONN; the caller reconnects.  A helper's own -errno answer
 * is a clean reply and leaves the connection usable.
 */
static int
conn_call(lockd_conn *c, struct proto_wr *wr, const int *fds, size_t nfds,
          struct proto_rd *ret_body)
{
    int r;

    if (c->broken)
        return -ENOTCONN;
    c->status_reply = 0;
    r = conn_call_once(c, wr, fds, nfds, ret_body);
    if (r < 0 && !c->status_reply) {
        c->broken = 1;
        (void)shutdown(c->sock, SHUT_RDWR);
    }
    return r;
}

static int
check_pid(int32_t pid)
{
    return pid > 0 ? 0 : -EINVAL;
}

LOCKD_API int
lockd_conn_register(lockd_conn *conn, int32_t pid, int pidfd, const char *uuid,
                    const char *name)
{
    return lockd_conn_register_on_loss(conn, pid, pidfd, uuid, name, -1, NULL);
}

LOCKD_API int
lockd_conn_register_on_loss(lockd_conn *conn, int32_t pid, int pidfd, const char *uuid,
                            const char *name, int on_loss, const char *command)
{
    uint8_t u[PROTO_UUID_BYTES];
    struct proto_wr wr;
    struct proto_rd rd;
    size_t nlen = name ? strlen(name) : 0, clen = command ? strlen(command) : 0;
    int r;

    if (!conn || check_pid(pid) < 0 || pidfd < -1 || nlen > LOCKD_OWNER_NAME_MAX ||
        uuid_parse(uuid, u) < 0 || on_loss < -1 || on_loss > LOCKD_ON_LOSS_EXEC_OR_KILL ||
        on_loss_has_hook(on_loss) != (clen > 0) || clen > LOCKD_COMMAND_MAX)
        return -EINVAL;
    conn_begin(conn, &wr, PROTO_REGISTER, pidfd >= 0);
    wr_i32(&wr, pid);
    wr_put(&wr, u, sizeof(u));
    wr_cstr(&wr, name);
    /* The action is a tail a helper of the first release does not know
     * (it answers -EPROTO, so a choice is never silently dropped): sent
     * only when one is chosen. */
    if (on_loss >= 0) {
        wr_u8(&wr, (uint8_t)on_loss);
        wr_cstr(&wr, command);
    }
    r = conn_call(conn, &wr, &pidfd, pidfd >= 0, &rd);
    if (r == 0 && rd.left != 0)
        r = -EPROTO;
    return r;
}

/* Send leases [first, first + count) of lease in one HANDOFF message. */
static int
handoff_chunk(lockd_conn *c, int32_t pid, const lockd_lease *l, const char *const *names,
              size_t first, size_t count, uint64_t *ret_ids)
{
    int fds[PROTO_FDS_MAX];
    struct proto_wr wr;
    struct proto_rd rd;
    size_t i;
    int r;

    conn_begin(c, &wr, PROTO_HANDOFF, (uint32_t)count);
    wr_i32(&wr, pid);
    wr_u16(&wr, (uint16_t)count);
    for (i = 0; i < count; i++) {
        const struct lease_ent *e = &l->ent[first + i];
        uint8_t key[PROTO_KEY_BYTES];

        /* A name (lvm, scsi) goes as its SHA-256: the helper checks that
         * the file's name hashes to it (PROTO_SPACE's named flag). */
        if (l->space && mode_named(l->space->mode)) {
            char hex[LOCKD_KEY_SIZE];

            (void)lockd_key_resource(e->key, strlen(e->key), hex);
            hex_to_key(hex, key);
        } else
            hex_to_key(e->key, key);
        wr_u8(&wr, (uint8_t)e->mode);
        wr_put(&wr, key, sizeof(key));
        wr_cstr(&wr, names ? names[first + i] : NULL);
        fds[i] = e->fd;
    }
    r = conn_call(c, &wr, fds, count, &rd);
    if (r < 0)
        return r;
    for (i = 0; i < count; i++)
        ret_ids[i] = rd_u64(&rd);
    return rd.bad || rd.left ? -EPROTO : 0;
}

/* How many leases from first on fit in one message: at most PROTO_FDS_MAX,
 * and their names within the body limit. */
static size_t
handoff_fit(const lockd_lease *l, const char *const *names, size_t first)
{
    size_t size = 4 + 2, i;

    for (i = first; i < l->n && i - first < PROTO_FDS_MAX; i++) {
        size_t item = 1 + PROTO_KEY_BYTES + 2 + (names && names[i] ? strlen(names[i]) : 0);

        if (size + item > PROTO_BODY_MAX)
            break;
        size += item;
    }
    return i - first;
}

static int release_all(lockd_conn *c, uint16_t type, int32_t pid, size_t n,
                       const uint64_t *ids);

/* Show the helper the lockspace's directory, unless this connection
 * showed it last: each fd handed over is checked against it.  A directory
 * whose identity is unknown is shown every time. */
static int
conn_bind(lockd_conn *conn, const lockd_space *space, int direct)
{
    struct proto_wr wr;
    struct proto_rd rd;
    int r, dirfd = space ? space->dirfd : -1;

    if (direct) {
        /* Direct leases: a SPACE without a directory tells the helper that
         * each fd is the disk named with it. */
        if (conn->direct)
            return 0;
        conn_begin(conn, &wr, PROTO_SPACE, 0);
        r = conn_call(conn, &wr, NULL, 0, &rd);
        if (r == -ENOTDIR || r == -EPROTO)
            return -EPROTONOSUPPORT; /* a helper older than direct leases */
        if (r < 0)
            return r;
        if (rd.bad || rd.left)
            return -EPROTO;
        conn->bound = 0;
        conn->direct = 1;
        return 0;
    }
    if (dirfd < 0)
        return 0; /* none to show */
    conn->direct = 0;
    if (space->has_id && conn->bound && conn->bound_dev == space->dev &&
        conn->bound_ino == space->ino && conn->bound_mnt == space->mnt)
        return 0;
    conn_begin(conn, &wr, PROTO_SPACE, 1);
    /* An lvm or scsi lockspace names its files after devices: the helper
     * is told, and checks names against the keys' hashes (a helper older
     * than that answers -EPROTO). */
    if (mode_named(space->mode))
        wr_u8(&wr, 1);
    r = conn_call(conn, &wr, &dirfd, 1, &rd);
    if (r == -EPROTO && mode_named(space->mode))
        return -EPROTONOSUPPORT;
    if (r < 0)
        return r;
    if (rd.bad || rd.left)
        return -EPROTO;
    conn->bound = space->has_id;
    conn->bound_dev = space->dev;
    conn->bound_ino = space->ino;
    conn->bound_mnt = space->mnt;
    return 0;
}

LOCKD_API int
lockd_conn_bind(lockd_conn *conn, const lockd_space *space)
{
    if (!conn || !space)
        return -EINVAL;
    return conn_bind(conn, space, 0);
}

LOCKD_API int
lockd_conn_handoff(lockd_conn *conn, int32_t pid, const lockd_lease *lease,
                   const char *const *names, uint64_t *ret_ids)
{
    const char **sorted = NULL;
    uint64_t *ids;
    size_t i, k;
    int r = 0;

    if (!conn || !lease || check_pid(pid) < 0)
        return -EINVAL;
    r = conn_bind(conn, lease->space, lease->direct);
    if (r < 0)
        return r;
    for (i = 0; names && i < lease->given; i++)
        if (names[i] && strlen(names[i]) > LOCKD_NAME_MAX)
            return -ENAMETOOLONG;
    ids = calloc(lease->n ? lease->n : 1, sizeof(*ids));
    /* The caller names its keys in its own order; the wire carries them in
     * the lease's.  A key given twice keeps its first non-NULL name. */
    sorted = calloc(lease->n ? lease->n : 1, sizeof(*sorted));
    if (!ids || !sorted) {
        free(ids), free(sorted);
        return -ENOMEM;
    }
    for (i = 0; names && i < lease->given; i++)
        if (!sorted[lease->slot[i]])
            sorted[lease->slot[i]] = names[i];
    for (i = 0; i < lease->n; i++)
        if (!sorted[i])
            sorted[i] = lease->ent[i].path; /* a direct lease names its disk */
    for (i = 0; i < lease->n; i += k) {
        k = handoff_fit(lease, sorted, i);
        r = handoff_chunk(conn, pid, lease, sorted, i, k, ids + i);
        if (r < 0)
            break;
    }
    if (r < 0 && i > 0)
        /* All or nothing: take back what earlier messages handed over.  A
         * release would unlock, and the unlock applies to the open file
         * description we share with the helper: FORGET makes it only close
         * its copies, so the leases stay held through ours. */
        (void)release_all(conn, PROTO_FORGET, pid, i, ids);
    else if (r == 0 && ret_ids)
        memcpy(ret_ids, ids, lease->n * sizeof(*ids));
    free(ids);
    free(sorted);
    return r;
}

#define RELEASE_IDS_MAX ((PROTO_BODY_MAX - 6) / 8)

static int
release_send(lockd_conn *c, uint16_t type, int32_t pid, size_t n, const uint64_t *ids)
{
    struct proto_wr wr;
    struct proto_rd rd;
    size_t i;
    int r;

    conn_begin(c, &wr, type, 0);
    wr_i32(&wr, pid);
    wr_u16(&wr, (uint16_t)n);
    for (i = 0; i < n; i++)
        wr_u64(&wr, ids[i]);
    if (type == PROTO_NOTICE) {
        r = proto_finish(&wr);
        if (r == 0 && c->broken)
            r = -ENOTCONN;
        return r < 0 ? r : proto_send(c->sock, wr.buf, wr.len, NULL, 0);
    }
    r = conn_call(c, &wr, NULL, 0, &rd);
    if (r < 0)
        return r;
    r = (int)rd_u32(&rd);
    return rd.bad || rd.left || r < 0 ? -EPROTO : r;
}

static int
release_all(lockd_conn *c, uint16_t type, int32_t pid, size_t n, const uint64_t *ids)
{
    size_t i = 0, k;
    int r, total = 0;

    if (!c || check_pid(pid) < 0 || (n > 0 && !ids))
        return -EINVAL;
    do {
        k = n - i < RELEASE_IDS_MAX ? n - i : RELEASE_IDS_MAX;
        r = release_send(c, type, pid, k, ids ? ids + i : NULL);
        if (r < 0)
            return r;
        total += r;
        i += k;
    } while (i < n);
    return total;
}

LOCKD_API int
lockd_conn_release(lockd_conn *conn, int32_t pid, size_t n, const uint64_t *ids)
{
    return release_all(conn, PROTO_RELEASE, pid, n, ids);
}

LOCKD_API int
lockd_conn_release_notice(lockd_conn *conn, int32_t pid, size_t n, const uint64_t *ids)
{
    int r = n == 0 ? -EINVAL : release_all(conn, PROTO_NOTICE, pid, n, ids);

    return r < 0 ? r : 0;
}

/* Copy a received string into a NUL-terminated buffer of size cap. */
static void
str_copy(char *dst, size_t cap, const char *s, uint16_t len)
{
    size_t n = len < cap - 1 ? len : cap - 1;

    memcpy(dst, s, n);
    dst[n] = '\0';
}

static int
list_rows(struct proto_rd *rd, lockd_list_fn fn, void *userdata)
{
    char key[LOCKD_KEY_SIZE], uuid[37], name[LOCKD_OWNER_NAME_MAX + 1];
    char disk[LOCKD_NAME_MAX + 1];
    uint16_t count = rd_u16(rd), i, nl, dl;

    for (i = 0; i < count && !rd->bad; i++) {
        uint64_t id = rd_u64(rd);
        int mode = rd_u8(rd);
        const uint8_t *k = rd_take(rd, PROTO_KEY_BYTES);
        int32_t pid = rd_i32(rd);
        uint32_t uid = rd_u32(rd);
        const uint8_t *u = rd_take(rd, PROTO_UUID_BYTES);
        const char *n = rd_str(rd, LOCKD_OWNER_NAME_MAX, &nl);
        const char *d = rd_str(rd, LOCKD_NAME_MAX, &dl);
        int r;

        if (rd->bad)
            break;
        key_to_hex(k, key);
        uuid_format(u, uuid);
        str_copy(name, sizeof(name), n, nl);
        str_copy(disk, sizeof(disk), d, dl);
        r = fn(userdata, id, mode, key, disk, pid, uid, uuid, name);
        if (r != 0)
            return r;
    }
    return rd->bad || rd->left ? -EPROTO : 0;
}

LOCKD_API int
lockd_conn_list(lockd_conn *conn, int32_t pid, const char *key, lockd_list_fn fn,
                void *userdata)
{
    uint8_t kb[PROTO_KEY_BYTES] = {0};
    uint64_t cursor = 0;
    struct proto_wr wr;
    struct proto_rd rd;
    int r = 0;

    if (!conn || !fn || pid < 0 || (key && !lockd_key_valid(key)))
        return -EINVAL;
    if (key)
        hex_to_key(key, kb);
    /* The helper answers a page at a time, so that no reply outgrows a
     * message; the cursor makes each page a fresh request. */
    do {
        conn_begin(conn, &wr, PROTO_LIST, 0);
        wr_i32(&wr, pid);
        wr_u8(&wr, key != NULL);
        wr_put(&wr, kb, sizeof(kb));
        wr_u64(&wr, cursor);
        r = conn_call(conn, &wr, NULL, 0, &rd);
        if (r < 0)
            return r;
        cursor = rd_u64(&rd);
        r = list_rows(&rd, fn, userdata);
    } while (r == 0 && cursor != 0);
    return r;
}

static int
owner_rows(struct proto_rd *rd, lockd_owner_fn fn, void *userdata)
{
    char uuid[37], name[LOCKD_OWNER_NAME_MAX + 1];
    uint16_t count = rd_u16(rd), i, nl;

    for (i = 0; i < count && !rd->bad; i++) {
        int32_t pid = rd_i32(rd);
        uint32_t uid = rd_u32(rd);
        const uint8_t *u = rd_take(rd, PROTO_UUID_BYTES);
        const char *n = rd_str(rd, LOCKD_OWNER_NAME_MAX, &nl);
        uint32_t leases = rd_u32(rd);
        int r;

        if (rd->bad)
            break;
        uuid_format(u, uuid);
        str_copy(name, sizeof(name), n, nl);
        r = fn(userdata, pid, uid, uuid, name, leases);
        if (r != 0)
            return r;
    }
    return rd->bad || rd->left ? -EPROTO : 0;
}

LOCKD_API int
lockd_conn_owners(lockd_conn *conn, lockd_owner_fn fn, void *userdata)
{
    uint64_t cursor = 0;
    struct proto_wr wr;
    struct proto_rd rd;
    int r = 0;

    if (!conn || !fn)
        return -EINVAL;
    do {
        conn_begin(conn, &wr, PROTO_OWNERS, 0);
        wr_u64(&wr, cursor);
        r = conn_call(conn, &wr, NULL, 0, &rd);
        if (r < 0)
            return r;
        cursor = rd_u64(&rd);
        r = owner_rows(&rd, fn, userdata);
    } while (r == 0 && cursor != 0);
    return r;
}

LOCKD_API int
lockd_conn_status(lockd_conn *conn, uint64_t *ret_owners, uint64_t *ret_leases,
                  uint64_t *ret_stored)
{
    uint64_t owners, leases, stored;
    struct proto_wr wr;
    struct proto_rd rd;
    int r;

    if (!conn)
        return -EINVAL;
    conn_begin(conn, &wr, PROTO_STATUS, 0);
    r = conn_call(conn, &wr, NULL, 0, &rd);
    if (r < 0)
        return r;
    owners = rd_u64(&rd);
    leases = rd_u64(&rd);
    stored = rd_u64(&rd);
    if (rd.bad || rd.left)
        return -EPROTO;
    if (ret_owners)
        *ret_owners = owners;
    if (ret_leases)
        *ret_leases = leases;
    if (ret_stored)
        *ret_stored = stored;
    return 0;
}

LOCKD_API int
lockd_conn_stuck(lockd_conn *conn, char *buf, size_t size)
{
    struct proto_wr wr;
    struct proto_rd rd;
    const char *text;
    uint16_t count, len;
    int r;

    if (!conn || (!buf && size))
        return -EINVAL;
    conn_begin(conn, &wr, PROTO_STUCK, 0);
    r = conn_call(conn, &wr, NULL, 0, &rd);
    if (r < 0)
        return r;
    count = rd_u16(&rd);
    text = rd_str(&rd, PROTO_STUCK_TEXT_MAX, &len);
    if (rd.bad || rd.left)
        return -EPROTO;
    if (size) {
        size_t n = len < size - 1 ? len : size - 1;

        memcpy(buf, text, n);
        buf[n] = '\0';
    }
    return count;
}

LOCKD_API int
lockd_conn_stop(lockd_conn *conn, int force)
{
    struct proto_wr wr;
    struct proto_rd rd;
    int r;

    if (!conn)
        return -EINVAL;
    conn_begin(conn, &wr, PROTO_STOP, 0);
    wr_u8(&wr, force ? 1 : 0);
    r = conn_call(conn, &wr, NULL, 0, &rd);
    if (r < 0)
        return r;
    return rd.bad || rd.left ? -EPROTO : 0;
}

