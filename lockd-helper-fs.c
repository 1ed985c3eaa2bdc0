/* SPDX-License-Identifier: MIT */
/*
 * lockd-helper-fs: one worker thread per filesystem for the calls that can
 * block on it.  See lockd-helper-fs.h.
 */
#define _GNU_SOURCE
#include "lockd-helper-fs.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

/* fsw_watch()'s job: n fds to check, answered one by one. */
struct watch {
    int how;
    uint32_t batch;
    size_t n;
    int *fds;
    short *types;
    uint64_t *tags;
};

struct job {
    int fd;
    int unlock;
    short check;     /* 0: dispose of fd; else fsw_prove_lock() of 1 + the type
                      * (F_RDLCK is 0) */
    uint64_t ticket; /* a check's: which answer is its */
    struct watch *watch; /* not NULL: a watch job (fd unused) */
    char *name;          /* not NULL: fsw_name_is() of it (fd unused) */
    uint64_t ino;        /* ... against this inode of the worker's device */
    uint16_t type;       /* ... and this file type (S_IFMT bits) */
    uint8_t follow;      /* ... following symlinks */
};

struct worker {
    dev_t dev;
    pthread_mutex_t mu;
    pthread_cond_t work, done;
    struct job *jobs; /* a ring */
    uint32_t head, count, cap;
    uint64_t queued, finished; /* jobs ever queued, ever finished */
    int64_t busy_since_ns;     /* when the job under way began; 0: none */
    char where[256];           /* its mount point, for fsw_stuck() */
    /* The last check's answer: the loop waits for one check at a time, and
     * one it gave up on answers under its own ticket, which nobody reads. */
    uint64_t check_ticket;
    int check_result;
};

static struct worker *workers[FSW_MAX];
static unsigned nworkers;

/* The watch's answers, from every worker to the loop. */
static struct {
    pthread_mutex_t mu;
    struct fsw_answer *ring;
    size_t head, count, cap;
    int efd;
} answers = {.mu = PTHREAD_MUTEX_INITIALIZER, .efd = -1};

static int64_t
now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int
fsw_statx(int fd, struct statx *ret)
{
    return statx(fd, "", AT_EMPTY_PATH | AT_STATX_DONT_SYNC,
                 STATX_TYPE | STATX_INO | STATX_MNT_ID, ret) < 0
               ? -errno
               : 0;
}

/* The only calls here that may wait for a server.  The unlock covers the
 * whole file: a lease's lock is byte 0, and nothing else of it is ours. */
void
fsw_close_local(int fd, int unlock)
{
    if (unlock) {
        struct flock fl = {.l_type = F_UNLCK, .l_whence = SEEK_SET};

        (void)fcntl(fd, F_OFD_SETLK, &fl);
    }
    (void)close(fd);
}

/*
 * Whether fd, on a FUSE filesystem that sends its locks to its server
 * (which then leaves no record in /proc/self/fdinfo), holds a lock of type
 * on byte 0.  The server answers F_OFD_GETLK with a lock of another owner
 * (an open file description is an owner), never with the asker's own: so
 * asked through fd it says whether anybody else holds a conflicting lock,
 * and asked through a second open file description of the same file
 * whether anybody holds one at all.  Exclusive: nobody else, and somebody,
 * so fd itself.  Shared: nobody writes, and somebody reads; when others
 * read too the read lock seen may be theirs, so a shared lease beside other
 * readers is not pinned to fd (lockd-helper(8), "Shared storage").  The
 * two are asked in turn twice (fd, other, fd, other), and all four answers
 * must agree: a holder that came and went between two queries (gc on
 * another host takes a free lease's lock for microseconds) is not taken
 * for fd.  The watch asks once (rounds 1): a lock it proved before is
 * checked for being gone, not proven again.  Nothing is ever locked or
 * unlocked.  1, 0, or -errno.  fd is the worker's own copy; the caller
 * closes it.
 */
static int
prove_lock(int fd, short type, int rounds)
{
    const struct flock ask = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_len = 1};
    struct flock mine[2], any[2];
    char path[40];
    int other, r = 0, i;

    snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
    other = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (other < 0)
        return -errno;
    for (i = 0; i < rounds && r == 0; i++) {
        mine[i] = any[i] = ask;
        if (fcntl(fd, F_OFD_GETLK, &mine[i]) < 0 || fcntl(other, F_OFD_GETLK, &any[i]) < 0)
            r = -errno;
    }
    (void)close(other);
    if (r < 0)
        return r;
    for (i = 0; i < rounds; i++)
        if (type == F_WRLCK ? mine[i].l_type != F_UNLCK || any[i].l_type != F_WRLCK
                            : mine[i].l_type == F_WRLCK || any[i].l_type != F_RDLCK)
            return 0;
    return 1;
}

/*
 * An NFS lease fd: F_OFD_GETLK through it goes to the server (LOCKT) when
 * this client sees no conflict itself, and names another host's lock:
 * one granted the disk after this client lost the lock's state (lease
 * expired, server restarted past its grace).  Never a lock taken: a
 * re-assert could take again a lock its manager just let go.  Not proven
 * on a real NFS server here (no kernel NFS client on the test machine):
 * lockd-helper(8), "Shared storage".
 */
static int
watch_nfs(int fd, short type)
{
    struct flock fl = {.l_type = type, .l_whence = SEEK_SET, .l_len = 1};

    if (fcntl(fd, F_OFD_GETLK, &fl) < 0)
        return -errno;
    return fl.l_type == F_UNLCK;
}

/* Queue one answer for the loop; a full ring grows, and out of memory the
 * answer is dropped (the loop's deadline then counts the check as not
 * answered: the safe side). */
static void
answer_put(uint64_t tag, int result)
{
    uint64_t one = 1;

    pthread_mutex_lock(&answers.mu);
    if (answers.count == answers.cap) {
        size_t cap = answers.cap ? answers.cap * 2 : 256, i;
        struct fsw_answer *ring = malloc(cap * sizeof(*ring));

        if (!ring) {
            pthread_mutex_unlock(&answers.mu);
            return;
        }
        for (i = 0; i < answers.count; i++)
            ring[i] = answers.ring[(answers.head + i) % answers.cap];
        free(answers.ring);
        answers.ring = ring;
        answers.cap = cap;
        answers.head = 0;
    }
    answers.ring[(answers.head + answers.count) % answers.cap] =
        (struct fsw_answer){.tag = tag, .result = result};
    answers.count++;
    pthread_mutex_unlock(&answers.mu);
    if (answers.efd >= 0)
        (void)write(answers.efd, &one, sizeof(one));
}

/* Each fd's check counts as one job for fsw_stuck(): a batch is not a
 * stall because it is long. */
static void
watch_run(struct worker *wk, struct watch *w)
{
    size_t i;

    for (i = 0; i < w->n; i++) {
        int r;

        if (i > 0) {
            pthread_mutex_lock(&wk->mu);
            wk->busy_since_ns = now_ns();
            pthread_mutex_unlock(&wk->mu);
        }
        r = w->how == FSW_WATCH_NFS ? watch_nfs(w->fds[i], w->types[i])
                                        : prove_lock(w->fds[i], w->types[i], 1);

        (void)close(w->fds[i]);
        answer_put(w->tags[i], r);
    }
    answer_put(0, (int)w->batch);
    free(w->fds);
    free(w->types);
    free(w->tags);
    free(w);
}

static void *
worker_main(void *arg)
{
    struct worker *w = arg;

    pthread_mutex_lock(&w->mu);
    for (;;) {
        struct job j;

        while (w->count == 0)
            pthread_cond_wait(&w->work, &w->mu);
        j = w->jobs[w->head];
        w->head = (w->head + 1) % w->cap;
        w->count--;
        w->busy_since_ns = now_ns();
        pthread_mutex_unlock(&w->mu);
        if (j.watch) {
            watch_run(w, j.watch);
            pthread_mutex_lock(&w->mu);
        } else if (j.name) {
            struct statx at;
            int r = statx(AT_FDCWD, j.name,
                          (j.follow ? 0 : AT_SYMLINK_NOFOLLOW) | AT_NO_AUTOMOUNT,
                          STATX_TYPE | STATX_INO, &at) < 0
                        ? (errno == ENOENT ? 0 : -errno)
                        : (at.stx_mode & S_IFMT) == j.type && at.stx_ino == j.ino &&
                              makedev(at.stx_dev_major, at.stx_dev_minor) == w->dev;

            free(j.name);
            pthread_mutex_lock(&w->mu);
            w->check_ticket = j.ticket;
            w->check_result = r;
        } else if (j.check) {
            int r = prove_lock(j.fd, (short)(j.check - 1), 2);

            (void)close(j.fd);
            pthread_mutex_lock(&w->mu);
            w->check_ticket = j.ticket;
            w->check_result = r;
        } else {
            fsw_close_local(j.fd, j.unlock);
            pthread_mutex_lock(&w->mu);
        }
        w->busy_since_ns = 0;
        w->finished++;
        pthread_cond_broadcast(&w->done);
    }
    return NULL;
}

/* The mount point and type of dev, from /proc/self/mountinfo (which the
 * kernel writes from what it has: no filesystem is asked). */
static void
mount_info(dev_t dev, char *buf, size_t size, char *type, size_t tsize)
{
    char line[4096], want[32];
    FILE *f = fopen("/proc/self/mountinfo", "re");

    snprintf(buf, size, "?");
    snprintf(type, tsize, "?");
    if (!f)
        return;
    snprintf(want, sizeof(want), "%u:%u", major(dev), minor(dev));
    while (fgets(line, sizeof(line), f)) {
        char *field[5], *p = line, *out;
        int k;

        for (k = 0; k < 5 && p; k++) {
            field[k] = p;
            p = strchr(p, ' ');
            if (p)
                *p++ = '\0';
        }
        if (k < 5 || strcmp(field[2], want) != 0)
            continue;
        /* The type follows the optional fields' " - ". */
        if (p && (p = strstr(p, " - ")))
            snprintf(type, tsize, "%.*s", (int)strcspn(p + 3, " \n"), p + 3);
        /* Undo the \ooo escapes of spaces and the like. */
        for (p = field[4], out = buf; *p && out < buf + size - 1; out++) {
            if (p[0] == '\\' && p[1] >= '0' && p[1] <= '3' && p[2] && p[3]) {
                *out = (char)((p[1] - '0') << 6 | (p[2] - '0') << 3 | (p[3] - '0'));
                p += 4;
            } else
                *out = *p++;
        }
        *out = '\0';
        break;
    }
    fclose(f);
}

static struct worker *
worker_new(dev_t dev)
{
    struct worker *w = calloc(1, sizeof(*w));
    pthread_condattr_t ca;
    pthread_attr_t attr;
    sigset_t all, old;
    pthread_t t;
    int r;

    if (!w)
        return NULL;
    w->dev = dev;
    pthread_mutex_init(&w->mu, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&w->work, &ca);
    pthread_cond_init(&w->done, &ca);
    pthread_condattr_destroy(&ca);
    {
        char type[64];

        mount_info(dev, w->where, sizeof(w->where), type, sizeof(type));
    }
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, 64 * 1024);
    /* Signals are the loop's (its signalfd): none may land in a worker. */
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    r = pthread_create(&t, &attr, worker_main, w);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pthread_attr_destroy(&attr);
    if (r != 0) {
        free(w);
        return NULL;
    }
    return w;
}

/* What the helper needs to know of a filesystem: FS_LOCAL (a close never
 * waits: ext2/3/4, xfs, btrfs, tmpfs, f2fs), FS_FUSE and FS_NFS bits. */
enum { FS_LOCAL = 1, FS_FUSE = 2, FS_NFS = 4 };

static int
fs_kind(const struct statx *stx)
{
    static const char *const local[] = {"ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "f2fs"};
    /* By device and mount: an anonymous device number (tmpfs, FUSE) comes
     * back for the next such mount once one is unmounted. */
    static struct {
        dev_t dev;
        uint64_t mnt;
        int kind;
    } cache[32];
    static unsigned ncache;
    dev_t dev = makedev(stx->stx_dev_major, stx->stx_dev_minor);
    uint64_t mnt = (stx->stx_mask & STATX_MNT_ID) ? stx->stx_mnt_id : 0;
    char where[256], type[64];
    unsigned i;
    int kind = 0;

    for (i = 0; mnt && i < ncache && i < 32; i++)
        if (cache[i].dev == dev && cache[i].mnt == mnt)
            return cache[i].kind;
    mount_info(dev, where, sizeof(where), type, sizeof(type));
    for (i = 0; i < sizeof(local) / sizeof(local[0]); i++)
        if (strcmp(type, local[i]) == 0)
            kind |= FS_LOCAL;
    if (strcmp(type, "fuse") == 0 || strncmp(type, "fuse.", 5) == 0)
        kind |= FS_FUSE;
    if (strcmp(type, "nfs") == 0 || strcmp(type, "nfs4") == 0)
        kind |= FS_NFS;
    cache[ncache % 32].dev = dev;
    cache[ncache % 32].mnt = mnt;
    cache[ncache % 32].kind = kind;
    ncache++;
    return kind;
}

int
fsw_close_is_local(const struct statx *stx)
{
    return !!(fs_kind(stx) & FS_LOCAL);
}

int
fsw_is_fuse(const struct statx *stx)
{
    return !!(fs_kind(stx) & FS_FUSE);
}

int
fsw_is_nfs(const struct statx *stx)
{
    return !!(fs_kind(stx) & FS_NFS);
}

static struct worker *
worker_get(dev_t dev)
{
    unsigned i;

    for (i = 0; i < nworkers; i++)
        if (workers[i]->dev == dev)
            return workers[i];
    if (nworkers == FSW_MAX || !(workers[nworkers] = worker_new(dev)))
        return NULL;
    return workers[nworkers++];
}

/* Queue a job; under w->mu.  The ring grows: it holds open fds, so the fd
 * limit bounds it. */
static int
push_locked(struct worker *w, int fd, int unlock)
{
    if (w->count == w->cap) {
        uint32_t cap = w->cap ? w->cap * 2 : 64, i;
        struct job *jobs = malloc(cap * sizeof(*jobs));

        if (!jobs)
            return -ENOMEM;
        for (i = 0; i < w->count; i++)
            jobs[i] = w->jobs[(w->head + i) % w->cap];
        free(w->jobs);
        w->jobs = jobs;
        w->cap = cap;
        w->head = 0;
    }
    w->jobs[(w->head + w->count) % w->cap] = (struct job){.fd = fd, .unlock = unlock};
    w->count++;
    w->queued++;
    pthread_cond_signal(&w->work);
    return 0;
}

static int
stuck_locked(const struct worker *w, int64_t now)
{
    return w->busy_since_ns && now - w->busy_since_ns > (int64_t)FSW_WAIT_MS * 1000000;
}

static void
deadline_after(struct timespec *ts, int ms)
{
    int64_t t = now_ns() + (int64_t)ms * 1000000;

    ts->tv_sec = t / 1000000000;
    ts->tv_nsec = t % 1000000000;
}

int
fsw_dispose(int fd, int unlock)
{
    struct statx stx;
    struct worker *w;
    struct timespec until;
    uint64_t mine;
    int done;

    if (fd < 0)
        return 1;
    /* A local file's close and unlock never wait: done here, at once. */
    if (fsw_statx(fd, &stx) < 0 || !S_ISREG(stx.stx_mode) || fsw_close_is_local(&stx) ||
        !(w = worker_get(makedev(stx.stx_dev_major, stx.stx_dev_minor)))) {
        fsw_close_local(fd, unlock);
        return 1;
    }
    pthread_mutex_lock(&w->mu);
    if (push_locked(w, fd, unlock) < 0) {
        pthread_mutex_unlock(&w->mu);
        fsw_close_local(fd, unlock);
        return 1;
    }
    mine = w->queued;
    /* Waited for unless the filesystem is stuck already: the answer then
     * reflects it (a release frees at once; a refused fd is not kept). */
    if (!stuck_locked(w, now_ns())) {
        deadline_after(&until, FSW_WAIT_MS);
        while (w->finished < mine && pthread_cond_timedwait(&w->done, &w->mu, &until) == 0)
            ;
    }
    done = w->finished >= mine;
    pthread_mutex_unlock(&w->mu);
    return done;
}

/* The question just queued last on w (under w->mu) gets its ticket; wait
 * up to wait_ms for its answer, let w->mu go and return the answer, or
 * -ETIMEDOUT (the worker answers later under a ticket nobody reads). */
static int
answer_unlock(struct worker *w, int wait_ms)
{
    struct timespec until;
    uint64_t mine = w->queued;
    int r;

    w->jobs[(w->head + w->count - 1) % w->cap].ticket = mine;
    deadline_after(&until, wait_ms);
    while (w->finished < mine && pthread_cond_timedwait(&w->done, &w->mu, &until) == 0)
        ;
    r = w->finished >= mine && w->check_ticket == mine ? w->check_result : -ETIMEDOUT;
    pthread_mutex_unlock(&w->mu);
    return r;
}

int
fsw_prove_lock(int fd, const struct statx *stx, short type, int wait_ms)
{
    struct worker *w = worker_get(makedev(stx->stx_dev_major, stx->stx_dev_minor));
    int copy, r;

    if (!w)
        return -ENOMEM;
    pthread_mutex_lock(&w->mu);
    r = stuck_locked(w, now_ns());
    pthread_mutex_unlock(&w->mu);
    if (r)
        return -ETIMEDOUT; /* its server does not answer: no new question */
    /* The worker's own copy: the loop may close fd (a refusal) while a
     * check it gave up on still runs.  A dup never waits for the server. */
    copy = fcntl(fd, F_DUPFD_CLOEXEC, 3);
    if (copy < 0)
        return -errno;
    pthread_mutex_lock(&w->mu);
    if (push_locked(w, copy, 0) < 0) {
        pthread_mutex_unlock(&w->mu);
        (void)close(copy); /* out of memory: the one close left on the loop */
        return -ENOMEM;
    }
    w->jobs[(w->head + w->count - 1) % w->cap].check = (short)(type + 1);
    return answer_unlock(w, wait_ms);
}

int
fsw_watch(dev_t dev, int how, uint32_t batch, const int *fds, const short *types,
          const uint64_t *tags, size_t n)
{
    struct worker *w = worker_get(dev);
    struct watch *job = calloc(1, sizeof(*job));
    size_t i;
    int r = -ENOMEM;

    if (w && job && (job->fds = malloc(n * sizeof(int))) &&
        (job->types = malloc(n * sizeof(short))) && (job->tags = malloc(n * sizeof(uint64_t)))) {
        job->how = how;
        job->batch = batch;
        job->n = n;
        memcpy(job->fds, fds, n * sizeof(int));
        memcpy(job->types, types, n * sizeof(short));
        memcpy(job->tags, tags, n * sizeof(uint64_t));
        pthread_mutex_lock(&w->mu);
        r = push_locked(w, -1, 0);
        if (r == 0)
            w->jobs[(w->head + w->count - 1) % w->cap].watch = job;
        pthread_mutex_unlock(&w->mu);
        if (r == 0)
            return 0;
    }
    if (job) {
        free(job->fds);
        free(job->types);
        free(job->tags);
        free(job);
    }
    /* Each is a copy of a held lease: closed, never unlocked. */
    for (i = 0; i < n; i++)
        (void)fsw_dispose(fds[i], 0);
    return r;
}

int
fsw_answer_fd(void)
{
    if (answers.efd < 0)
        answers.efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    return answers.efd < 0 ? -errno : answers.efd;
}

size_t
fsw_answers(struct fsw_answer *out, size_t max)
{
    uint64_t v;
    size_t n = 0;

    if (answers.efd >= 0)
        (void)read(answers.efd, &v, sizeof(v));
    size_t left;

    pthread_mutex_lock(&answers.mu);
    while (n < max && answers.count) {
        out[n++] = answers.ring[answers.head];
        answers.head = (answers.head + 1) % answers.cap;
        answers.count--;
    }
    left = answers.count;
    pthread_mutex_unlock(&answers.mu);
    /* Answers left over: readable again, for the next turn of the loop. */
    if (left && answers.efd >= 0) {
        v = 1;
        (void)write(answers.efd, &v, sizeof(v));
    }
    return n;
}

int
fsw_name_is(const struct statx *stx, const char *path, int follow, int wait_ms)
{
    struct worker *w = worker_get(makedev(stx->stx_dev_major, stx->stx_dev_minor));
    char *name = strdup(path);
    int r;

    if (!w || !name) {
        free(name);
        return -ENOMEM;
    }
    pthread_mutex_lock(&w->mu);
    if (stuck_locked(w, now_ns()) || push_locked(w, -1, 0) < 0) {
        r = stuck_locked(w, now_ns()) ? -ETIMEDOUT : -ENOMEM;
        pthread_mutex_unlock(&w->mu);
        free(name);
        return r;
    }
    w->jobs[(w->head + w->count - 1) % w->cap].name = name;
    w->jobs[(w->head + w->count - 1) % w->cap].ino = stx->stx_ino;
    w->jobs[(w->head + w->count - 1) % w->cap].type = stx->stx_mode & S_IFMT;
    w->jobs[(w->head + w->count - 1) % w->cap].follow = follow != 0;
    return answer_unlock(w, wait_ms);
}

int
fsw_idle(int wait_ms)
{
    struct timespec until;
    unsigned i;
    int idle = 1;

    deadline_after(&until, wait_ms);
    for (i = 0; i < nworkers; i++) {
        struct worker *w = workers[i];

        pthread_mutex_lock(&w->mu);
        while (w->finished < w->queued && pthread_cond_timedwait(&w->done, &w->mu, &until) == 0)
            ;
        idle &= w->finished == w->queued;
        pthread_mutex_unlock(&w->mu);
    }
    return idle;
}

int
fsw_stuck(char *buf, size_t size)
{
    int64_t now = now_ns();
    size_t len = 0;
    unsigned i;
    int n = 0;

    if (size)
        buf[0] = '\0';
    for (i = 0; i < nworkers; i++) {
        struct worker *w = workers[i];

        pthread_mutex_lock(&w->mu);
        if (stuck_locked(w, now)) {
            int k = snprintf(buf + len, size - len, "%s (dev %u:%u): stuck for %.1f s, %llu waiting\n",
                             w->where, major(w->dev), minor(w->dev),
                             (double)(now - w->busy_since_ns) / 1e9,
                             (unsigned long long)(w->queued - w->finished));

            if (k > 0 && (size_t)k < size - len)
                len += (size_t)k;
            n++;
        }
        pthread_mutex_unlock(&w->mu);
    }
    return n;
}
