/* SPDX-License-Identifier: MIT */
/*
 * stallfs: a passthrough FUSE filesystem that hangs on demand, so that a test
 * can prove a daemon keeps serving while a filesystem it uses is stuck (an
 * NFS server gone, a wedged FUSE daemon).
 *
 *   stallfs BACKING_DIR MOUNTPOINT CONTROL_SOCKET
 *
 * It mirrors BACKING_DIR at MOUNTPOINT, in the foreground, and prints "ready"
 * on stdout once the mount is live and CONTROL_SOCKET listens; nothing else
 * goes to stdout.  Each line on the control socket gets one line back:
 *
 *   stall        ok       from now on every operation blocks at its start
 *   go           ok       wake the blocked operations, stop blocking
 *   blocked      N op...  how many operations wait now, and their names
 *   wait OP      ok       once an operation OP (or "any") waits
 *   quit         ok       then resume, unmount and exit
 *
 * SIGTERM, SIGINT and SIGHUP do what quit does.
 *
 * There is no lock or flock operation, on purpose: without them the kernel
 * keeps POSIX, OFD and flock locks on a FUSE file itself, as it does on a
 * local filesystem, and no lock request ever reaches (or waits for) this
 * server.  Every other request does, even getattr: attributes and entries are
 * never cached (attr_timeout=0, entry_timeout=0, negative_timeout=0).
 */
#define _GNU_SOURCE
/* 3.12 for fuse_loop_cfg_set_max_threads(): the 3.0 loop stops at 10 workers,
 * and a request beyond the tenth stalled one would wait unseen in the kernel
 * queue, where neither "blocked" nor "wait" can see it. */
#define FUSE_USE_VERSION 312

#include <fuse.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/types.h>
#include <sys/un.h>
#include <unistd.h>

#define MAX_WORKERS 64  /* more than any test keeps blocked at once */
#define CMD_MAX     256 /* a command line */
#define REPLY_MAX   (MAX_WORKERS * 16 + 32)

enum op {
    OP_GETATTR,
    OP_READLINK,
    OP_MKNOD,
    OP_MKDIR,
    OP_UNLINK,
    OP_RMDIR,
    OP_SYMLINK,
    OP_RENAME,
    OP_LINK,
    OP_CHMOD,
    OP_CHOWN,
    OP_TRUNCATE,
    OP_OPEN,
    OP_READ,
    OP_WRITE,
    OP_STATFS,
    OP_FLUSH,
    OP_RELEASE,
    OP_FSYNC,
    OP_OPENDIR,
    OP_READDIR,
    OP_RELEASEDIR,
    OP_FSYNCDIR,
    OP_ACCESS,
    OP_CREATE,
    OP_UTIMENS,
    OP_FALLOCATE,
    OP_COUNT,
    OP_ANY = -1,
};

static const char *const op_names[OP_COUNT] = {
    [OP_GETATTR] = "getattr",       [OP_READLINK] = "readlink", [OP_MKNOD] = "mknod",
    [OP_MKDIR] = "mkdir",           [OP_UNLINK] = "unlink",     [OP_RMDIR] = "rmdir",
    [OP_SYMLINK] = "symlink",       [OP_RENAME] = "rename",     [OP_LINK] = "link",
    [OP_CHMOD] = "chmod",           [OP_CHOWN] = "chown",       [OP_TRUNCATE] = "truncate",
    [OP_OPEN] = "open",             [OP_READ] = "read",         [OP_WRITE] = "write",
    [OP_STATFS] = "statfs",         [OP_FLUSH] = "flush",       [OP_RELEASE] = "release",
    [OP_FSYNC] = "fsync",           [OP_OPENDIR] = "opendir",   [OP_READDIR] = "readdir",
    [OP_RELEASEDIR] = "releasedir", [OP_FSYNCDIR] = "fsyncdir", [OP_ACCESS] = "access",
    [OP_CREATE] = "create",         [OP_UTIMENS] = "utimens",   [OP_FALLOCATE] = "fallocate",
};

/* The stall, shared by the FUSE workers and the control threads. */
static struct {
    pthread_mutex_t lock;
    pthread_cond_t resumed; /* blocked operations wait here */
    pthread_cond_t changed; /* "wait" waits here for an operation to block */
    bool stalled;
    bool exiting;   /* no more stalls: the loop is ending */
    bool loop_done; /* fuse_loop_mt() returned: no fuse_exit() any more */
    uint64_t generation; /* bumped by each resume */
    struct timespec until; /* "stall SECONDS": the stall ends by itself then */
    bool timed;
    unsigned nblocked;
    unsigned blocked[OP_COUNT];
} S = {
    .lock = PTHREAD_MUTEX_INITIALIZER,
    .resumed = PTHREAD_COND_INITIALIZER,
    .changed = PTHREAD_COND_INITIALIZER,
};

static int backing_fd = -1;
static char mnt_path[PATH_MAX];
static struct fuse *fs;
static int listen_fd = -1, signal_fd = -1, stop_fd = -1;

/*
 * Every operation starts here.  An operation woken by "go" runs even when a
 * "stall" follows before it is scheduled (the generation has moved on), so
 * that "go" always lets through what was waiting.
 */
static void resume_locked(void);

static void
stall_point(enum op op)
{
    uint64_t generation;

    pthread_mutex_lock(&S.lock);
    if (S.stalled) {
        generation = S.generation;
        S.blocked[op]++;
        S.nblocked++;
        pthread_cond_broadcast(&S.changed);
        while (S.stalled && S.generation == generation) {
            if (!S.timed)
                pthread_cond_wait(&S.resumed, &S.lock);
            else if (pthread_cond_timedwait(&S.resumed, &S.lock, &S.until) == ETIMEDOUT &&
                     S.stalled && S.generation == generation)
                resume_locked();
        }
        S.blocked[op]--;
        S.nblocked--;
    }
    pthread_mutex_unlock(&S.lock);
}

/* Called with S.lock held. */
static void
resume_locked(void)
{
    S.stalled = false;
    S.generation++;
    pthread_cond_broadcast(&S.resumed);
}

/* The high-level API hands absolute paths; the *at() calls want them
 * relative to the backing directory. */
static const char *
rel(const char *path)
{
    return path[1] ? path + 1 : ".";
}

static int
neg_errno(int r)
{
    return r < 0 ? -errno : r;
}

/*
 * This server runs as root and so creates everything as root: give a new
 * entry to the caller, as a local filesystem would (allow_other lets other
 * uids in; default_permissions has the kernel check their rights).
 */
static int
give_to_caller(const char *path, int fd)
{
    const struct fuse_context *ctx = fuse_get_context();

    if (ctx->uid == geteuid() && ctx->gid == getegid())
        return 0;
    if (fd >= 0)
        return neg_errno(fchown(fd, ctx->uid, ctx->gid));
    return neg_errno(fchownat(backing_fd, rel(path), ctx->uid, ctx->gid, AT_SYMLINK_NOFOLLOW));
}

static DIR *
dir_of(const struct fuse_file_info *fi)
{
    return (DIR *)(uintptr_t)fi->fh;
}

static void *
sfs_init(struct fuse_conn_info *conn, struct fuse_config *cfg)
{
    (void)conn;
    cfg->use_ino = 1;     /* st_ino of the backing file, stable across lookups */
    cfg->hard_remove = 1; /* no .fuse_hidden* files in a lockspace after unlink */
    cfg->nullpath_ok = 1; /* so an unlinked open file is reached by its fd */
    return NULL;
}

static int
sfs_getattr(const char *path, struct stat *st, struct fuse_file_info *fi)
{
    stall_point(OP_GETATTR);
    if (fi)
        return neg_errno(fstat((int)fi->fh, st));
    return neg_errno(fstatat(backing_fd, rel(path), st, AT_SYMLINK_NOFOLLOW));
}

static int
sfs_readlink(const char *path, char *buf, size_t size)
{
    ssize_t n;

    stall_point(OP_READLINK);
    if (size == 0)
        return -EINVAL;
    n = readlinkat(backing_fd, rel(path), buf, size - 1);
    if (n < 0)
        return -errno;
    buf[n] = '\0';
    return 0;
}

static int
sfs_mknod(const char *path, mode_t mode, dev_t rdev)
{
    stall_point(OP_MKNOD);
    if (mknodat(backing_fd, rel(path), mode, rdev) < 0)
        return -errno;
    return give_to_caller(path, -1);
}

static int
sfs_mkdir(const char *path, mode_t mode)
{
    stall_point(OP_MKDIR);
    if (mkdirat(backing_fd, rel(path), mode) < 0)
        return -errno;
    return give_to_caller(path, -1);
}

static int
sfs_unlink(const char *path)
{
    stall_point(OP_UNLINK);
    return neg_errno(unlinkat(backing_fd, rel(path), 0));
}

static int
sfs_rmdir(const char *path)
{
    stall_point(OP_RMDIR);
    return neg_errno(unlinkat(backing_fd, rel(path), AT_REMOVEDIR));
}

static int
sfs_symlink(const char *target, const char *path)
{
    stall_point(OP_SYMLINK);
    if (symlinkat(target, backing_fd, rel(path)) < 0)
        return -errno;
    return give_to_caller(path, -1);
}

static int
sfs_rename(const char *from, const char *to, unsigned int flags)
{
    stall_point(OP_RENAME);
    return neg_errno(renameat2(backing_fd, rel(from), backing_fd, rel(to), flags));
}

static int
sfs_link(const char *from, const char *to)
{
    stall_point(OP_LINK);
    return neg_errno(linkat(backing_fd, rel(from), backing_fd, rel(to), 0));
}

static int
sfs_chmod(const char *path, mode_t mode, struct fuse_file_info *fi)
{
    stall_point(OP_CHMOD);
    if (fi)
        return neg_errno(fchmod((int)fi->fh, mode));
    return neg_errno(fchmodat(backing_fd, rel(path), mode, 0));
}

static int
sfs_chown(const char *path, uid_t uid, gid_t gid, struct fuse_file_info *fi)
{
    stall_point(OP_CHOWN);
    if (fi)
        return neg_errno(fchown((int)fi->fh, uid, gid));
    return neg_errno(fchownat(backing_fd, rel(path), uid, gid, AT_SYMLINK_NOFOLLOW));
}

static int
sfs_truncate(const char *path, off_t size, struct fuse_file_info *fi)
{
    int fd, r;

    stall_point(OP_TRUNCATE);
    if (fi)
        return neg_errno(ftruncate((int)fi->fh, size));
    /* There is no truncateat(). */
    fd = openat(backing_fd, rel(path), O_WRONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
    if (fd < 0)
        return -errno;
    r = neg_errno(ftruncate(fd, size));
    close(fd);
    return r;
}

static int
sfs_open(const char *path, struct fuse_file_info *fi)
{
    int fd;

    stall_point(OP_OPEN);
    fd = openat(backing_fd, rel(path), fi->flags | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    fi->fh = (uint64_t)fd;
    return 0;
}

static int
sfs_create(const char *path, mode_t mode, struct fuse_file_info *fi)
{
    int fd, r;

    stall_point(OP_CREATE);
    fd = openat(backing_fd, rel(path), fi->flags | O_CREAT | O_CLOEXEC, mode);
    if (fd < 0)
        return -errno;
    r = give_to_caller(path, fd);
    if (r < 0) {
        unlinkat(backing_fd, rel(path), 0);
        close(fd);
        return r;
    }
    fi->fh = (uint64_t)fd;
    return 0;
}

static int
sfs_read(const char *path, char *buf, size_t size, off_t off, struct fuse_file_info *fi)
{
    ssize_t n;

    (void)path;
    stall_point(OP_READ);
    n = pread((int)fi->fh, buf, size, off);
    return n < 0 ? -errno : (int)n;
}

static int
sfs_write(const char *path, const char *buf, size_t size, off_t off, struct fuse_file_info *fi)
{
    ssize_t n;

    (void)path;
    stall_point(OP_WRITE);
    n = pwrite((int)fi->fh, buf, size, off);
    return n < 0 ? -errno : (int)n;
}

static int
sfs_statfs(const char *path, struct statvfs *st)
{
    (void)path;
    stall_point(OP_STATFS);
    return neg_errno(fstatvfs(backing_fd, st));
}

/* Closing a duplicate reports what closing the backing file would (an NFS
 * write-back error), as close() of the FUSE file should. */
static int
sfs_flush(const char *path, struct fuse_file_info *fi)
{
    int fd;

    (void)path;
    stall_point(OP_FLUSH);
    fd = fcntl((int)fi->fh, F_DUPFD_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    return neg_errno(close(fd));
}

static int
sfs_release(const char *path, struct fuse_file_info *fi)
{
    (void)path;
    stall_point(OP_RELEASE);
    close((int)fi->fh);
    return 0;
}

static int
sfs_fsync(const char *path, int datasync, struct fuse_file_info *fi)
{
    (void)path;
    stall_point(OP_FSYNC);
    return neg_errno(datasync ? fdatasync((int)fi->fh) : fsync((int)fi->fh));
}

static int
sfs_opendir(const char *path, struct fuse_file_info *fi)
{
    DIR *d;
    int fd;

    stall_point(OP_OPENDIR);
    fd = openat(backing_fd, rel(path), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    d = fdopendir(fd);
    if (!d) {
        close(fd);
        return -errno;
    }
    fi->fh = (uint64_t)(uintptr_t)d;
    return 0;
}

/* The whole directory in one call, every offset 0: libfuse buffers it and
 * serves the kernel's reads from there, so no seekdir() cookie is needed. */
static int
sfs_readdir(const char *path, void *buf, fuse_fill_dir_t filler, off_t off,
            struct fuse_file_info *fi, enum fuse_readdir_flags flags)
{
    DIR *d = dir_of(fi);
    struct dirent *de;

    (void)path, (void)off, (void)flags;
    stall_point(OP_READDIR);
    rewinddir(d);
    for (errno = 0; (de = readdir(d)); errno = 0) {
        struct stat st = {.st_ino = de->d_ino, .st_mode = DTTOIF(de->d_type)};

        if (filler(buf, de->d_name, &st, 0, 0) != 0)
            return -ENOMEM;
    }
    return -errno;
}

static int
sfs_releasedir(const char *path, struct fuse_file_info *fi)
{
    (void)path;
    stall_point(OP_RELEASEDIR);
    closedir(dir_of(fi));
    return 0;
}

static int
sfs_fsyncdir(const char *path, int datasync, struct fuse_file_info *fi)
{
    int fd = dirfd(dir_of(fi));

    (void)path;
    stall_point(OP_FSYNCDIR);
    return neg_errno(datasync ? fdatasync(fd) : fsync(fd));
}

static int
sfs_access(const char *path, int mask)
{
    stall_point(OP_ACCESS);
    return neg_errno(faccessat(backing_fd, rel(path), mask, AT_SYMLINK_NOFOLLOW));
}

static int
sfs_utimens(const char *path, const struct timespec tv[2], struct fuse_file_info *fi)
{
    stall_point(OP_UTIMENS);
    if (fi)
        return neg_errno(futimens((int)fi->fh, tv));
    return neg_errno(utimensat(backing_fd, rel(path), tv, AT_SYMLINK_NOFOLLOW));
}

static int
sfs_fallocate(const char *path, int mode, off_t off, off_t len, struct fuse_file_info *fi)
{
    (void)path;
    stall_point(OP_FALLOCATE);
    return neg_errno(fallocate((int)fi->fh, mode, off, len));
}

static const struct fuse_operations sfs_ops = {
    .init = sfs_init,
    .getattr = sfs_getattr,
    .readlink = sfs_readlink,
    .mknod = sfs_mknod,
    .mkdir = sfs_mkdir,
    .unlink = sfs_unlink,
    .rmdir = sfs_rmdir,
    .symlink = sfs_symlink,
    .rename = sfs_rename,
    .link = sfs_link,
    .chmod = sfs_chmod,
    .chown = sfs_chown,
    .truncate = sfs_truncate,
    .open = sfs_open,
    .read = sfs_read,
    .write = sfs_write,
    .statfs = sfs_statfs,
    .flush = sfs_flush,
    .release = sfs_release,
    .fsync = sfs_fsync,
    .opendir = sfs_opendir,
    .readdir = sfs_readdir,
    .releasedir = sfs_releasedir,
    .fsyncdir = sfs_fsyncdir,
    .access = sfs_access,
    .create = sfs_create,
    .utimens = sfs_utimens,
    .fallocate = sfs_fallocate,
    /* No .lock, no .flock: see the top of this file. */
};

static int
spawn_detached(void *(*fn)(void *), void *arg)
{
    pthread_attr_t attr;
    pthread_t t;
    int r;

    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    r = pthread_create(&t, &attr, fn, arg);
    pthread_attr_destroy(&attr);
    return -r;
}

/*
 * fuse_loop_mt() notices fuse_exit() only when a worker finishes a request
 * (or a signal interrupts it, but every thread here blocks them): hand it
 * one.  A forced getattr of the root always reaches a worker, which drops it
 * on seeing the exit; this thread then waits until the unmount closes
 * /dev/fuse, which fails the request, so it must not be one anybody joins.
 */
static void *
waker_main(void *arg)
{
    struct statx stx;

    (void)arg;
    (void)statx(AT_FDCWD, mnt_path, AT_STATX_FORCE_SYNC, STATX_MODE, &stx);
    return NULL;
}

/* Resume for good, and end the loop if it still runs.  Idempotent. */
static void
request_exit(void)
{
    bool wake;

    pthread_mutex_lock(&S.lock);
    wake = !S.exiting && !S.loop_done;
    S.exiting = true;
    resume_locked();
    pthread_cond_broadcast(&S.changed);
    /* Under the lock: main() destroys fs once loop_done is set. */
    if (wake)
        fuse_exit(fs);
    pthread_mutex_unlock(&S.lock);
    if (wake && spawn_detached(waker_main, NULL) < 0)
        fprintf(stderr, "stallfs: cannot wake the FUSE loop: it ends on the next request\n");
}

static int
parse_op(const char *name)
{
    if (strcmp(name, "any") == 0)
        return OP_ANY;
    for (int i = 0; i < OP_COUNT; i++)
        if (strcmp(name, op_names[i]) == 0)
            return i;
    return -2;
}

static void
cmd_blocked(char *reply, size_t size)
{
    size_t len;

    pthread_mutex_lock(&S.lock);
    len = (size_t)snprintf(reply, size, "%u", S.nblocked);
    for (int i = 0; i < OP_COUNT; i++)
        for (unsigned n = 0; n < S.blocked[i] && len < size; n++)
            len += (size_t)snprintf(reply + len, size - len, " %s", op_names[i]);
    pthread_mutex_unlock(&S.lock);
}

/* Blocks this connection's thread only; the condition variable is
 * broadcast whenever an operation blocks, and on exit. */
static void
cmd_wait(const char *name, char *reply, size_t size)
{
    int op = parse_op(name);

    if (op == -2) {
        snprintf(reply, size, "error unknown operation %s", name);
        return;
    }
    pthread_mutex_lock(&S.lock);
    while (!S.exiting && (op == OP_ANY ? S.nblocked : S.blocked[op]) == 0)
        pthread_cond_wait(&S.changed, &S.lock);
    snprintf(reply, size, "%s", S.exiting ? "error exiting" : "ok");
    pthread_mutex_unlock(&S.lock);
}

/* "stall" or "stall SECONDS": a test that fails while a stall holds its
 * own exit (a close flushes) is freed by the stall's end, not left hung. */
static void
cmd_stall(const char *arg, char *reply, size_t size)
{
    pthread_mutex_lock(&S.lock);
    S.timed = arg && atoi(arg) > 0;
    if (S.timed) {
        clock_gettime(CLOCK_REALTIME, &S.until);
        S.until.tv_sec += atoi(arg);
    }
    if (!S.exiting)
        S.stalled = true;
    snprintf(reply, size, "%s", S.exiting ? "error exiting" : "ok");
    pthread_mutex_unlock(&S.lock);
}

static void
cmd_go(char *reply, size_t size)
{
    pthread_mutex_lock(&S.lock);
    resume_locked();
    pthread_mutex_unlock(&S.lock);
    snprintf(reply, size, "ok");
}

/* Returns true for quit, which the caller carries out once it replied. */
static bool
run_command(char *line, char *reply, size_t size)
{
    if (strcmp(line, "stall") == 0)
        cmd_stall(NULL, reply, size);
    else if (strncmp(line, "stall ", 6) == 0)
        cmd_stall(line + 6, reply, size);
    else if (strcmp(line, "go") == 0)
        cmd_go(reply, size);
    else if (strcmp(line, "blocked") == 0)
        cmd_blocked(reply, size);
    else if (strncmp(line, "wait ", 5) == 0)
        cmd_wait(line + 5, reply, size);
    else if (strcmp(line, "quit") == 0) {
        snprintf(reply, size, "ok");
        return true;
    } else
        snprintf(reply, size, "error unknown command");
    return false;
}

static int
send_line(int fd, const char *s)
{
    char buf[REPLY_MAX + 2];
    size_t len = (size_t)snprintf(buf, sizeof(buf), "%s\n", s), off = 0;

    if (len >= sizeof(buf))
        len = sizeof(buf) - 1;
    while (off < len) {
        ssize_t n = send(fd, buf + off, len - off, MSG_NOSIGNAL);

        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -errno;
        off += (size_t)n;
    }
    return 0;
}

/* Takes the first line out of buf (NUL-terminated, without "\r\n"); returns
 * the length it had, newline included, or 0 when there is no whole line. */
static size_t
take_line(char *buf, size_t len)
{
    char *nl = memchr(buf, '\n', len);

    if (!nl)
        return 0;
    *nl = '\0';
    if (nl > buf && nl[-1] == '\r')
        nl[-1] = '\0';
    return (size_t)(nl - buf) + 1;
}

static void *
conn_main(void *arg)
{
    int fd = (int)(intptr_t)arg;
    char buf[CMD_MAX] = "", reply[REPLY_MAX];
    size_t len = 0, used;
    bool quit = false;

    while (!quit) {
        used = take_line(buf, len);
        if (used == 0) {
            ssize_t n;

            if (len == sizeof(buf))
                break; /* no command is this long */
            n = read(fd, buf + len, sizeof(buf) - len);
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0)
                break;
            len += (size_t)n;
            continue;
        }
        quit = run_command(buf, reply, sizeof(reply));
        if (send_line(fd, reply) < 0)
            break;
        memmove(buf, buf + used, len - used);
        len -= used;
    }
    close(fd);
    if (quit)
        request_exit();
    return NULL;
}

static void
accept_one(void)
{
    int fd = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC);

    if (fd < 0) {
        if (errno != EINTR && errno != EAGAIN && errno != ECONNABORTED)
            fprintf(stderr, "stallfs: accept: %s\n", strerror(errno));
        return;
    }
    /* A thread per connection: a "wait" must not hold up a "go". */
    if (spawn_detached(conn_main, (void *)(intptr_t)fd) < 0) {
        fprintf(stderr, "stallfs: cannot start a connection thread\n");
        close(fd);
    }
}

static void *
control_main(void *arg)
{
    struct pollfd p[3] = {
        {.fd = listen_fd, .events = POLLIN},
        {.fd = signal_fd, .events = POLLIN},
        {.fd = stop_fd, .events = POLLIN},
    };

    (void)arg;
    for (;;) {
        if (poll(p, 3, -1) < 0) {
            if (errno == EINTR)
                continue;
            fprintf(stderr, "stallfs: poll: %s\n", strerror(errno));
            request_exit();
            return NULL;
        }
        if (p[2].revents)
            return NULL;
        if (p[1].revents & POLLIN) {
            struct signalfd_siginfo si;

            if (read(signal_fd, &si, sizeof(si)) == (ssize_t)sizeof(si))
                request_exit();
        }
        if (p[0].revents & POLLIN)
            accept_one();
    }
}

static int
control_listen(const char *path)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    struct stat st;
    mode_t old;
    int fd, r;

    if (strlen(path) >= sizeof(sa.sun_path))
        return -ENAMETOOLONG;
    memcpy(sa.sun_path, path, strlen(path) + 1);
    /* A socket left by a killed run would fail bind(); anything else at that
     * path is not ours to remove. */
    if (lstat(path, &st) == 0 && S_ISSOCK(st.st_mode))
        unlink(path);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    old = umask(0077); /* only its owner may stall the filesystem */
    r = bind(fd, (struct sockaddr *)&sa, sizeof(sa));
    umask(old);
    if (r < 0 || listen(fd, 16) < 0) {
        r = -errno;
        close(fd);
        return r;
    }
    return fd;
}

/*
 * SIGTERM, SIGINT and SIGHUP are blocked in every thread (the FUSE workers
 * inherit the mask) and read from a signalfd by the control thread: it must
 * resume blocked operations before the loop can join its workers, which a
 * signal handler could not do.  Their dispositions are reset first, as an
 * ignored signal never reaches a signalfd.
 */
static int
setup_signals(void)
{
    struct sigaction sa = {.sa_handler = SIG_DFL};
    sigset_t mask;

    sigemptyset(&mask);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGHUP);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    sa.sa_handler = SIG_IGN; /* a reader gone from stdout or a socket */
    sigaction(SIGPIPE, &sa, NULL);
    if (pthread_sigmask(SIG_SETMASK, &mask, NULL) != 0)
        return -EINVAL;
    signal_fd = signalfd(-1, &mask, SFD_CLOEXEC);
    return signal_fd < 0 ? -errno : 0;
}

static struct fuse *
mount_fs(void)
{
    char *argv[] = {
        (char *)"stallfs", (char *)"-o",
        (char *)"fsname=stallfs,subtype=stallfs,default_permissions,allow_other,"
                "attr_timeout=0,entry_timeout=0,negative_timeout=0",
        NULL,
    };
    struct fuse_args args = FUSE_ARGS_INIT(3, argv);
    struct fuse *f;

    f = fuse_new(&args, &sfs_ops, sizeof(sfs_ops), NULL);
    fuse_opt_free_args(&args);
    if (!f)
        return NULL;
    if (fuse_mount(f, mnt_path) != 0) {
        fuse_destroy(f);
        return NULL;
    }
    return f;
}

static int
run_loop(void)
{
    struct fuse_loop_config *cfg = fuse_loop_cfg_create();
    int r;

    if (!cfg)
        return -ENOMEM;
    fuse_loop_cfg_set_max_threads(cfg, MAX_WORKERS);
    r = fuse_loop_mt(fs, cfg);
    fuse_loop_cfg_destroy(cfg);
    return r;
}

static int
fail(const char *what, int r)
{
    fprintf(stderr, "stallfs: %s: %s\n", what, strerror(-r));
    return r;
}

/* Everything before the mount that can fail; returns -errno. */
static int
setup(const char *backing, const char *mnt, const char *ctl)
{
    int r;

    r = setup_signals();
    if (r < 0)
        return fail("signals", r);
    backing_fd = open(backing, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (backing_fd < 0)
        return fail(backing, -errno);
    if (!realpath(mnt, mnt_path))
        return fail(mnt, -errno);
    listen_fd = control_listen(ctl);
    if (listen_fd < 0)
        return fail(ctl, listen_fd);
    stop_fd = eventfd(0, EFD_CLOEXEC);
    if (stop_fd < 0)
        return fail("eventfd", -errno);
    /* Modes arrive with the caller's umask applied by the kernel. */
    umask(0);
    return 0;
}

int
main(int argc, char **argv)
{
    pthread_t control;
    int r, ret = 1;

    if (argc != 4) {
        fprintf(stderr, "usage: stallfs BACKING_DIR MOUNTPOINT CONTROL_SOCKET\n");
        return 2;
    }
    if (setup(argv[1], argv[2], argv[3]) < 0)
        goto out;
    fs = mount_fs();
    if (!fs) {
        fprintf(stderr, "stallfs: cannot mount %s\n", mnt_path);
        goto out;
    }
    r = pthread_create(&control, NULL, control_main, NULL);
    if (r != 0) {
        fprintf(stderr, "stallfs: control thread: %s\n", strerror(r));
        fuse_unmount(fs);
        fuse_destroy(fs);
        goto out;
    }
    printf("ready\n");
    fflush(stdout);

    r = run_loop();

    pthread_mutex_lock(&S.lock);
    S.loop_done = true;
    S.exiting = true;
    resume_locked();
    pthread_cond_broadcast(&S.changed);
    pthread_mutex_unlock(&S.lock);
    fuse_unmount(fs);
    eventfd_write(stop_fd, 1);
    pthread_join(control, NULL);
    fuse_destroy(fs);
    ret = r == 0 ? 0 : 1;
out:
    if (listen_fd >= 0)
        unlink(argv[3]);
    return ret;
}
