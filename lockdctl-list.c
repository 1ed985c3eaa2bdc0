/* SPDX-License-Identifier: MIT */
/*
 * lockdctl-list.c: `lockdctl list`, every lease file of a lockspace with
 * its state, its disk where known and its holder.
 *
 * It works from the lockspace alone: each lease file's lock is probed
 * (F_OFD_GETLK, which takes nothing and waits for nobody), and its holder
 * record, if any, gives the disk's name and, while the lease is held
 * exclusively, the holder.  A helper that answers adds the names of the
 * owners it holds leases for; none at all is fine.
 *
 * A lockspace may hold 100,000 lease files, so the walk is one readdir of
 * the directory, every name kept in one growing buffer, and per file only
 * the system calls the probe needs, relative to the directory's fd.  A
 * file is never opened for real unless it is a regular one: an O_PATH look
 * first, then that inode reopened read-only (a FIFO or device planted under
 * a lease's name must never be opened, and a symlink never followed).
 * Each name other people chose goes to the terminal escaped, by table_add().
 */
#define _GNU_SOURCE
#include "lockd.h"
#include "lockdctl.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* States besides LOCKD_FREE, LOCKD_SHARED and LOCKD_EXCLUSIVE. */
#define STATE_UNKNOWN -1 /* a lease file that could not be probed */
#define STATE_FOREIGN -2 /* planted under a lease's name: not a regular file */

#define PROGRESS_MS 200 /* between two progress lines */

/* The names of the lease files, NUL-terminated one after the other in buf;
 * at[i] is where the i-th begins. */
struct names {
    char *buf;
    size_t len, cap;
    size_t *at;
    size_t n, ncap;
    uint64_t other; /* files that are not a lease's and not lockd's own */
};

/* The keys the helper holds leases under (in any lockspace), sorted: only
 * for those is it asked who holds them here. */
struct keyset {
    char (*keys)[LOCKD_KEY_SIZE];
    size_t n, cap;
};

struct list_ctx {
    const struct opts *o;
    const lockd_space *space;
    lockd_conn *conn; /* NULL: no helper (any more) */
    int helper_rc;    /* the exit status a helper failure left */
    struct keyset held;
    struct table t;
    lockd_holder_info hi; /* the file's record, if rec */
    uint64_t total, nheld, nfree, unknown, foreign;
    size_t rows; /* JSON objects written */
    char host[256];
};

/* One lease file's holders from the helper, as who lists them. */
struct row {
    const struct opts *o;
    struct who_ctx who;
    struct holders h;
    char disk[LOCKD_NAME_MAX + 1]; /* the first the helper was handed */
};

/* Whether name can be a lease's in space's key mode: 64 lowercase hex
 * digits, or in an lvm or scsi lockspace a device's name (what lockd.c
 * accepts: 1 to 255 bytes, no '/' or control byte, not starting with '.',
 * which leaves out lockd's own files). */
static int
lease_name(const lockd_space *space, const char *name)
{
    size_t i;

    if (lockd_space_mode(space) < LOCKD_MODE_LVM)
        return lockd_key_valid(name);
    if (name[0] == '.')
        return 0;
    for (i = 0; name[i]; i++)
        if ((unsigned char)name[i] < 0x20 || name[i] == 0x7f ||
            i >= LOCKD_BLOCK_KEY_SIZE - 1)
            return 0;
    return 1;
}

static int
names_add(struct names *nm, const char *name)
{
    size_t len = strlen(name) + 1;

    if (nm->len + len > nm->cap) {
        size_t cap = nm->cap ? 2 * nm->cap : 65536;
        char *b;

        while (cap < nm->len + len)
            cap *= 2;
        b = realloc(nm->buf, cap);
        if (!b)
            return -ENOMEM;
        nm->buf = b, nm->cap = cap;
    }
    if (nm->n == nm->ncap) {
        size_t cap = nm->ncap ? 2 * nm->ncap : 1024;
        size_t *a = realloc(nm->at, cap * sizeof(*a));

        if (!a)
            return -ENOMEM;
        nm->at = a, nm->ncap = cap;
    }
    memcpy(nm->buf + nm->len, name, len);
    nm->at[nm->n++] = nm->len;
    nm->len += len;
    return 0;
}

static const char *names_sorting; /* qsort() has no userdata */

static int
names_cmp(const void *a, const void *b)
{
    return strcmp(names_sorting + *(const size_t *)a, names_sorting + *(const size_t *)b);
}

/* Read the lease files' names of space, sorted.  Files whose names are no
 * lease's are counted in nm->other, except lockd's own (dot files). */
static int
names_read(const lockd_space *space, struct names *nm)
{
    struct dirent *de;
    DIR *d;
    int fd, r = 0;

    fd = openat(lockd_space_fd(space), ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    d = fdopendir(fd);
    if (!d) {
        r = -errno;
        close(fd);
        return r;
    }
    while (r == 0 && (errno = 0, de = readdir(d)))
        if (lease_name(space, de->d_name))
            r = names_add(nm, de->d_name);
        else if (de->d_name[0] != '.')
            nm->other++;
    if (r == 0 && errno)
        r = -errno;
    closedir(d);
    names_sorting = nm->buf;
    if (r == 0 && nm->n > 1)
        qsort(nm->at, nm->n, sizeof(*nm->at), names_cmp);
    return r;
}

static int
open_retry(int dirfd, const char *name, int flags)
{
    int fd;

    do
        fd = openat(dirfd, name, flags);
    while (fd < 0 && errno == EINTR);
    return fd < 0 ? -errno : fd;
}

/*
 * Reopen the regular file pfd (O_PATH, with st from fstat) read-only: the
 * inode itself through /proc/self/fd, so that a name swapped in the
 * meantime cannot make us open something else; without /proc by its name,
 * and then checked to be the same inode.
 */
static int
reopen(int pfd, const struct stat *st, int dirfd, const char *name)
{
    const int flags = O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK;
    char self[64];
    struct stat now;
    int fd;

    snprintf(self, sizeof(self), "/proc/self/fd/%d", pfd);
    fd = open_retry(AT_FDCWD, self, flags);
    if (fd != -ENOENT || access("/proc/self/fd", F_OK) == 0)
        return fd;
    fd = open_retry(dirfd, name, flags | O_NOFOLLOW);
    if (fd >= 0 && (fstat(fd, &now) < 0 || now.st_dev != st->st_dev ||
                    now.st_ino != st->st_ino || !S_ISREG(now.st_mode))) {
        close(fd);
        return -ENXIO;
    }
    return fd;
}

/*
 * Whether lease file name in dirfd is held, without taking it: LOCKD_FREE,
 * LOCKD_SHARED or LOCKD_EXCLUSIVE, with the pid the kernel knows for a
 * classic POSIX lock (0 for an OFD lock) and the file's size; -ELOOP,
 * -EISDIR or -ENXIO for something planted there, -ENOENT if it is gone
 * (gc), or another -errno.  F_OFD_GETLK through a read-only description:
 * it checks no access mode, and our new description conflicts with every
 * lock there is, this process's included.
 */
static int
probe_file(int dirfd, const char *name, int32_t *ret_pid, off_t *ret_size)
{
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 1};
    struct stat st;
    int pfd, fd = -1, r;

    pfd = open_retry(dirfd, name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
    if (pfd < 0)
        return pfd;
    if (fstat(pfd, &st) < 0)
        r = -errno;
    else
        r = S_ISLNK(st.st_mode)    ? -ELOOP
            : S_ISDIR(st.st_mode)  ? -EISDIR
            : !S_ISREG(st.st_mode) ? -ENXIO
                                   : 0;
    if (r == 0)
        r = fd = reopen(pfd, &st, dirfd, name);
    close(pfd);
    if (r < 0)
        return r;
    do
        r = fcntl(fd, F_OFD_GETLK, &fl);
    while (r < 0 && errno == EINTR);
    r = r < 0 ? -errno : 0;
    close(fd);
    if (r < 0)
        return r;
    *ret_pid = fl.l_type == F_UNLCK || fl.l_pid < 0 ? 0 : fl.l_pid;
    *ret_size = st.st_size;
    return fl.l_type == F_UNLCK   ? LOCKD_FREE
           : fl.l_type == F_RDLCK ? LOCKD_SHARED
                                  : LOCKD_EXCLUSIVE;
}

/* ------------------------------------------------------------------------
 * The helper's view
 */

static int
key_row(void *userdata, uint64_t id, int mode, const char *key, const char *disk,
        int32_t pid, uint32_t uid, const char *uuid, const char *name)
{
    struct keyset *k = userdata;

    (void)id, (void)mode, (void)disk, (void)pid, (void)uid, (void)uuid, (void)name;
    if (k->n == k->cap) {
        size_t cap = k->cap ? 2 * k->cap : 64;
        char(*keys)[LOCKD_KEY_SIZE] = realloc(k->keys, cap * sizeof(*keys));

        if (!keys)
            return -ENOMEM;
        k->keys = keys, k->cap = cap;
    }
    memcpy(k->keys[k->n++], key, LOCKD_KEY_SIZE);
    return 0;
}

static int
key_cmp(const void *a, const void *b)
{
    return strcmp(a, b);
}

/* The helper failed: say so once, go on without it. */
static void
helper_lost(struct list_ctx *c, int r)
{
    helper_error(c->o->socket, r);
    errorf("note: holders are not named");
    c->helper_rc = helper_status(r);
    lockd_conn_close(c->conn);
    c->conn = NULL;
}

/* Connect to the helper if its socket is there, show it the lockspace and
 * learn which keys it holds.  Without one, c->conn stays NULL. */
static void
helper_load(struct list_ctx *c)
{
    int r;

    if (!socket_present(c->o->socket))
        return;
    r = lockd_conn_open(c->o->socket, &c->conn);
    if (r == 0)
        r = lockd_conn_bind(c->conn, c->space);
    if (r == 0)
        r = lockd_conn_list(c->conn, 0, NULL, key_row, &c->held);
    if (r < 0) {
        helper_lost(c, r);
        return;
    }
    if (c->held.n > 1)
        qsort(c->held.keys, c->held.n, sizeof(*c->held.keys), key_cmp);
}

/* A holder row from the helper: its disk's name, and the holder as who
 * shows it (JSON objects, or text). */
static int
list_row(void *userdata, uint64_t id, int mode, const char *key, const char *disk,
         int32_t pid, uint32_t uid, const char *uuid, const char *name)
{
    struct row *r = userdata;

    if (!r->disk[0] && *disk)
        snprintf(r->disk, sizeof(r->disk), "%s", disk);
    if (r->o->json)
        return who_row(&r->who, id, mode, key, disk, pid, uid, uuid, name);
    return holder_row(&r->h, id, mode, key, disk, pid, uid, uuid, name);
}

/* Ask the helper for the holders of lease file name here, if it holds its
 * key anywhere.  Its failure is reported; the listing goes on. */
static void
helper_holders(struct list_ctx *c, const char *name, struct row *row)
{
    char key[LOCKD_KEY_SIZE];
    int r;

    if (!c->conn)
        return;
    /* An lvm or scsi lease is listed under the hash of its name. */
    if (lockd_space_mode(c->space) >= LOCKD_MODE_LVM)
        (void)lockd_key_resource(name, strlen(name), key);
    else
        memcpy(key, name, LOCKD_KEY_SIZE);
    /* (bsearch() takes no NULL array, even of no keys.) */
    if (c->held.n == 0 ||
        !bsearch(key, c->held.keys, c->held.n, sizeof(*c->held.keys), key_cmp))
        return;
    r = lockd_conn_list(c->conn, 0, key, list_row, row);
    if (r < 0)
        helper_lost(c, r);
}

/* ------------------------------------------------------------------------
 * One lease file
 */

static void
list_json(struct list_ctx *c, const char *name, int state, int err, int32_t pid, int rec,
          struct row *row)
{
    const char *disk;
    int holder = state == LOCKD_EXCLUSIVE && pid <= 0 && rec;

    printf("%s{\"key\":", c->rows++ ? "," : "");
    json_str(name);
    printf(",\"state\":\"%s\",\"holders\":[", state == STATE_FOREIGN ? "foreign"
                                              : state == STATE_UNKNOWN
                                                  ? "unknown"
                                                  : mode_word(state));
    helper_holders(c, name, row);
    if (row->who.count == 0 && (holder || pid > 0))
        holder_json(holder ? &c->hi : NULL, pid, row->who.rows > 0);
    /* The helper's name for the disk first: it was handed over now. */
    disk = row->disk[0] ? row->disk : rec ? or_null(c->hi.resource) : NULL;
    printf("],\"disk\":");
    json_str(disk);
    printf(",\"record\":");
    if (holder)
        record_json(&c->hi);
    else
        printf("null");
    if (err) {
        printf(",\"error\":");
        json_str(lease_reason(err));
    }
    putchar('}');
}

static int
list_text(struct list_ctx *c, const char *name, int state, int err, int32_t pid, int rec,
          struct row *row)
{
    char holder[1024];
    const char *disk;
    const char *word = state == STATE_FOREIGN   ? "foreign"
                       : state == STATE_UNKNOWN ? "unknown"
                                                : mode_word(state);

    helper_holders(c, name, row);
    disk = row->disk[0] ? row->disk : rec ? c->hi.resource : "";
    if (err)
        snprintf(holder, sizeof(holder), "%s", lease_reason(err));
    else if (row->h.count > 0)
        snprintf(holder, sizeof(holder), "%s", row->h.text);
    else if (state == LOCKD_EXCLUSIVE && pid <= 0 && rec &&
             record_text(c->space, name, holder, sizeof(holder)) == 0)
        ;
    else if (pid > 0)
        snprintf(holder, sizeof(holder), "pid %d (a classic POSIX lock)", (int)pid);
    else
        holder[0] = '\0';
    /* table_add() escapes what others chose (put_text()). */
    return table_add(&c->t, name, word, disk, holder);
}

/* Whether a file in state is listed, as --held or --free ask. */
static int
wanted(const struct opts *o, int state)
{
    if (o->list_filter == LIST_HELD)
        return state == LOCKD_SHARED || state == LOCKD_EXCLUSIVE;
    if (o->list_filter == LIST_FREE)
        return state == LOCKD_FREE;
    return 1;
}

/* Probe lease file name, count it, and list it if wanted.  0 or -ENOMEM. */
static int
list_one(struct list_ctx *c, const char *name)
{
    struct row row = {.o = c->o, .who = {.o = c->o, .host = c->host}};
    int32_t pid = 0;
    off_t size = 0;
    int state = probe_file(lockd_space_fd(c->space), name, &pid, &size), err = 0, rec;

    if (state == -ENOENT)
        return 0; /* removed since the directory was read (gc) */
    if (state == -ELOOP || state == -EISDIR || state == -ENXIO)
        err = state, state = STATE_FOREIGN, c->foreign++;
    else if (state < 0)
        err = state, state = STATE_UNKNOWN, c->unknown++;
    else if (state == LOCKD_FREE)
        c->nfree++;
    else
        c->nheld++;
    c->total += state != STATE_FOREIGN;
    if (!wanted(c->o, state))
        return 0;
    /* An empty file has no record: most free leases cost no read. */
    rec = size > 0 && lockd_holder(c->space, name, &c->hi) == 0;
    if (!c->o->json)
        return list_text(c, name, state, err, pid, rec, &row);
    list_json(c, name, state, err, pid, rec, &row);
    return 0;
}

/* ------------------------------------------------------------------------
 * The command
 */

/* "lockdctl list: 51200/100000 lease files, 83000/s" over itself, on a
 * terminal's stderr. */
static void
progress(size_t done, size_t total, int64_t start)
{
    double s = (double)(now_ms() - start) / 1e3;

    fprintf(stderr, "\rlockdctl list: %zu/%zu lease files, %.0f/s", done, total,
            s > 0 ? (double)done / s : 0.0);
}

/* "10 lease files: 3 held, 7 free", and what else there was. */
static void
totals_text(const struct list_ctx *c, uint64_t other)
{
    printf("%" PRIu64 " lease file%s: %" PRIu64 " held, %" PRIu64 " free", c->total,
           c->total == 1 ? "" : "s", c->nheld, c->nfree);
    if (c->unknown)
        printf(", %" PRIu64 " unknown", c->unknown);
    if (c->foreign)
        printf("; %" PRIu64 " foreign file%s planted under a lease's name", c->foreign,
               c->foreign == 1 ? "" : "s");
    if (other)
        printf("; %" PRIu64 " other file%s left out", other, other == 1 ? "" : "s");
    putchar('\n');
}

static void
totals_json(const struct list_ctx *c, uint64_t other)
{
    printf("],\"total\":%" PRIu64 ",\"held\":%" PRIu64 ",\"free\":%" PRIu64
           ",\"unknown\":%" PRIu64 ",\"foreign\":%" PRIu64 ",\"other\":%" PRIu64 "}\n",
           c->total, c->nheld, c->nfree, c->unknown, c->foreign, other);
    json_complete();
}

int
cmd_list(const struct opts *o, int argc, char **argv)
{
    struct list_ctx c = {.o = o, .t = {.ncols = 4}};
    int tty = isatty(STDERR_FILENO), r;
    struct names nm = {0};
    lockd_space *space = NULL;
    int64_t start = now_ms(), shown_at = start;
    size_t i;

    (void)argv;
    if (argc > 0)
        return usage_error("list: takes no arguments");
    r = space_open(o, LOCKD_OPEN_READONLY, &space);
    if (r != 0)
        return r;
    c.space = space;
    note_unrecorded(o, space);
    r = names_read(space, &nm);
    if (r < 0) {
        errorf("lockspace %s: %s", o->dir, strerror(-r));
        r = EXIT_FAIL;
        goto out;
    }
    if (gethostname(c.host, sizeof(c.host) - 1) < 0)
        c.host[0] = '\0';
    helper_load(&c);
    if (o->json) {
        printf("{\"lockspace\":");
        json_str(o->dir);
        printf(",\"leases\":[");
    } else
        r = table_add(&c.t, "KEY", "STATE", "DISK", "HOLDER");
    for (i = 0; r == 0 && i < nm.n; i++) {
        r = list_one(&c, nm.buf + nm.at[i]);
        if (tty && (i + 1) % 256 == 0 && now_ms() - shown_at >= PROGRESS_MS) {
            progress(i + 1, nm.n, start);
            shown_at = now_ms();
        }
    }
    if (tty && shown_at != start)
        fputs("\r\033[K", stderr);
    if (r < 0) {
        /* Half a document is no document: end it, and say why. */
        if (o->json)
            totals_json(&c, nm.other);
        errorf("lockspace %s: %s", o->dir, strerror(-r));
        r = EXIT_FAIL;
        goto out;
    }
    if (o->json)
        totals_json(&c, nm.other);
    else {
        if (c.t.nrows > 1)
            table_print(&c.t);
        totals_text(&c, nm.other);
    }
    if (c.unknown)
        errorf("%" PRIu64 " lease file%s could not be probed (state unknown)", c.unknown,
               c.unknown == 1 ? "" : "s");
    r = c.unknown ? EXIT_FAIL : c.helper_rc;
out:
    table_free(&c.t);
    lockd_conn_close(c.conn);
    free(c.held.keys);
    free(nm.buf);
    free(nm.at);
    lockd_space_close(space);
    return r;
}
