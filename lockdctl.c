/* SPDX-License-Identifier: MIT */
/*
 * lockdctl: lockd for admins and scripts.
 *
 * A flock(1)-style wrapper (`run`), hand-over of leases to lockd-helper for a
 * running process (`acquire`, `release`), and the views an admin needs
 * (`key`, `status`, `who`, `gc`, `doctor`).  Everything here is a thin layer
 * over lockd.h; the one rule this file adds is how a disk named on the
 * command line becomes a path (disk_path()), and how a failure becomes one
 * line on stderr and an exit status (sysexits(3) numbers, as DESIGN.md fixes
 * them).  `doctor` is in lockdctl-doctor.c; lockdctl.h declares what the two
 * files share.  See lockdctl(1).
 */
#define _GNU_SOURCE
#include "lockd.h"
#include "lockdctl.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

/* ------------------------------------------------------------------------
 * Messages
 */

/* Length of the well-formed UTF-8 sequence at p (2-4 bytes) and its code
 * point, or 0: a stray byte, an overlong form, a surrogate. */
static size_t
utf8_decode(const unsigned char *p, uint32_t *ret)
{
    uint32_t c;
    size_t n, i;

    if (*p >= 0xc2 && *p <= 0xdf)
        n = 2, c = *p & 0x1fu;
    else if (*p >= 0xe0 && *p <= 0xef)
        n = 3, c = *p & 0x0fu;
    else if (*p >= 0xf0 && *p <= 0xf4)
        n = 4, c = *p & 0x07u;
    else
        return 0;
    for (i = 1; i < n; i++) {
        if ((p[i] & 0xc0) != 0x80)
            return 0;
        c = c << 6 | (p[i] & 0x3fu);
    }
    if ((n == 3 && c < 0x800) || (n == 4 && c < 0x10000) || c > 0x10ffff ||
        (c >= 0xd800 && c <= 0xdfff))
        return 0;
    *ret = c;
    return n;
}

/* Whether code point c (>= 0x80) is one a terminal acts on or hides: the
 * C1 controls (CSI rewrites the screen as ESC [ does), and the invisible
 * ones that reorder or hide what follows (zero-width and direction marks,
 * bidi embeddings and isolates, line separators). */
static int
unicode_hidden(uint32_t c)
{
    return c < 0xa0 || (c >= 0x200b && c <= 0x200f) || (c >= 0x2028 && c <= 0x202e) ||
           (c >= 0x2066 && c <= 0x2069) || c == 0xfeff;
}

/* Length of the character at p if a terminal may print it as it is (1-4),
 * else 0. */
static size_t
utf8_printable(const unsigned char *p)
{
    uint32_t c = 0;
    size_t n;

    if (*p >= 0x20 && *p < 0x7f)
        return 1;
    n = utf8_decode(p, &c);
    return n && !unicode_hidden(c) ? n : 0;
}

/*
 * s for a terminal: names come from other users (a guest's name handed over
 * by nobody, a file planted in a world-writable lockspace) and must not
 * clear root's screen, forge a line or hide in an escape sequence.  Every
 * byte that is not part of a printable UTF-8 character is written as \xHH
 * (a backslash stays one: a SCSI name may hold one, and it is harmless).
 */
void
put_text(FILE *f, const char *s)
{
    const unsigned char *p = (const unsigned char *)(s ? s : "");
    size_t n;

    while (*p) {
        n = utf8_printable(p);
        if (n > 0)
            fwrite(p, 1, n, f);
        else
            fprintf(f, "\\x%02x", *p);
        p += n ? n : 1;
    }
}

/* put_text() into a new string (NULL when out of memory). */
char *
text_escaped(const char *s)
{
    char *buf = NULL;
    size_t size = 0;
    FILE *f = open_memstream(&buf, &size);

    if (!f)
        return NULL;
    put_text(f, s);
    if (fclose(f) != 0) {
        free(buf);
        return NULL;
    }
    return buf;
}

/* The last error said, for the JSON error object of a --json command
 * (json_error()); warnings and notes are not errors. */
static char last_error[1024];

static void
say(const char *fmt, va_list ap)
{
    char *msg = NULL;

    if (vasprintf(&msg, fmt, ap) < 0)
        msg = NULL;
    fputs("lockdctl: ", stderr);
    put_text(stderr, msg ? msg : fmt);
    fputc('\n', stderr);
    if (msg && strncmp(msg, "warning: ", 9) != 0 && strncmp(msg, "note: ", 6) != 0)
        snprintf(last_error, sizeof(last_error), "%s", msg);
    free(msg);
}

void
errorf(const char *fmt, ...)
{
    va_list ap;

    fflush(stdout);
    va_start(ap, fmt);
    say(fmt, ap);
    va_end(ap);
}

/* A usage error: the message, a pointer to --help, and EXIT_USAGE. */
int
usage_error(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    say(fmt, ap);
    va_end(ap);
    fputs("Try 'lockdctl --help' for more information.\n", stderr);
    return EXIT_USAGE;
}

/* Errors that mean "the helper is not there to talk to", as opposed to the
 * helper refusing a request. */
static int
is_helper_gone(int r)
{
    return r == -ECONNREFUSED || r == -ENOENT || r == -ENOTSOCK || r == -ECONNRESET ||
           r == -EPIPE || r == -ETIMEDOUT || r == -EPROTO || r == -EPROTONOSUPPORT ||
           r == -EACCES || r == -ENOTDIR || r == -EPROTOTYPE || r == -ENAMETOOLONG ||
           r == -EAGAIN || r == -ECONNABORTED;
}

/* Why a lease call failed, in words for the line that names the disk. */
const char *
lease_reason(int r)
{
    switch (-r) {
    case ENOLCK:
        return "the lockspace's filesystem does not support OFD locks (see lockdctl "
               "doctor)";
    case ELOOP:
        return "a symlink is planted in the lockspace where its lease belongs";
    case EISDIR:
        return "a directory is planted in the lockspace where its lease belongs";
    case ENXIO:
        return "a FIFO, socket or device is planted in the lockspace where its lease "
               "belongs";
    case ENAMETOOLONG:
        return "name too long";
    case EINVAL:
        return "not a usable path";
    case EINPROGRESS:
        return "a gc of the lockspace kept its index locked for too long; try again";
    default:
        return strerror(-r);
    }
}

void
helper_error(const char *path, int r)
{
    if (r == -EPROTONOSUPPORT)
        errorf("helper at %s speaks another protocol version", path);
    else if (r == -EPROTOTYPE)
        errorf("helper at %s: a stream socket is there, not lockd-helper's "
               "sequential-packet one: another program's socket, or a wrong --socket",
               path);
    else if (r == -ENAMETOOLONG)
        errorf("helper at %s: the path is longer than a UNIX socket address holds "
               "(107 bytes); give a shorter --socket",
               path);
    else if (r == -EAGAIN)
        errorf("helper at %s is not accepting connections (its listen queue is full, "
               "or it hangs); try again, or see lockdctl doctor",
               path);
    else if (r == -EPROTO)
        errorf("helper at %s sent a malformed reply", path);
    else
        errorf("helper at %s: %s", path, strerror(-r));
}

/* The exit status for a failed helper call. */
int
helper_status(int r)
{
    return is_helper_gone(r) ? EXIT_UNAVAILABLE : EXIT_FAIL;
}

/* A helper call about owner pid failed: say so, return the exit status. */
static int
owner_error(const struct opts *o, int32_t pid, int r)
{
    if (r == -ESRCH)
        errorf("pid %d: not an owner the helper knows (exited, or never registered)",
               (int)pid);
    else if (r == -EPERM)
        errorf("pid %d: the helper lets you act only on your own processes", (int)pid);
    else
        helper_error(o->socket, r);
    return helper_status(r);
}

/* ------------------------------------------------------------------------
 * Paths
 */

/*
 * The path a disk named on the command line stands for.  An absolute path is
 * taken as given: in the verbatim key mode its bytes are the key, exactly as
 * libvirt spells them.  A relative one is joined to the working directory as
 * the shell spells it ($PWD when that names the working directory, which is
 * what get_current_dir_name(3) checks; getcwd(3) otherwise), with "." and
 * empty components dropped and ".." kept as written (DESIGN.md, key modes).
 */
static int
disk_path(const char *in, char **ret)
{
    char *cwd, *out, *copy, *tok, *save = NULL;
    size_t len;

    if (!*in)
        return -EINVAL;
    if (in[0] == '/') {
        out = strdup(in);
        if (!out)
            return -ENOMEM;
        *ret = out;
        return 0;
    }
    cwd = get_current_dir_name();
    if (!cwd)
        return -errno;
    len = strlen(cwd);
    out = malloc(len + strlen(in) + 2);
    copy = strdup(in);
    if (!out || !copy) {
        free(cwd), free(out), free(copy);
        return -ENOMEM;
    }
    memcpy(out, cwd, len + 1);
    if (len > 1 && out[len - 1] == '/')
        out[--len] = '\0';
    for (tok = strtok_r(copy, "/", &save); tok; tok = strtok_r(NULL, "/", &save)) {
        if (strcmp(tok, ".") == 0)
            continue;
        if (len > 1)
            out[len++] = '/';
        memcpy(out + len, tok, strlen(tok) + 1);
        len += strlen(tok);
    }
    free(cwd);
    free(copy);
    *ret = out;
    return 0;
}

/*
 * The lockspace directory or the helper's socket when no option gave it:
 * the library's default (lockd_default_dir(), lockd_default_socket()),
 * spelled out here so that messages can name it even when it is missing.
 * With nothing to go by it is NULL, not an error: only the commands that
 * need one say so (no_lockspace(); run goes on without a helper).  A
 * relative LOCKD_DIR or LOCKD_SOCKET is a usage error: what it names would
 * change with the working directory.  -ENOMEM is an error, never "none":
 * run would go on without a helper it should use.
 */
static int
default_path(int (*get)(char **), const char *var, char **ret)
{
    int r = get(ret);

    if (r == -ENOENT) {
        *ret = NULL;
        return 0;
    }
    if (r == -EINVAL)
        return usage_error("%s=%s: not an absolute path", var, getenv(var));
    if (r < 0) {
        errorf("%s: %s", var, strerror(-r));
        return EXIT_FAIL;
    }
    return 0;
}

/* A command about to open a lockspace when none was given or implied:
 * the message and EXIT_FAIL, else 0. */
int
no_lockspace(const struct opts *o)
{
    if (o->dir)
        return 0;
    errorf("no lockspace: set LOCKD_DIR or HOME, or give --dir");
    return EXIT_FAIL;
}

/* Whether something exists at the socket path: DESIGN.md's rule for `run` is
 * "use the helper when its socket exists", and a socket that exists but does
 * not answer is an error, never a reason to go on without it. */
int
socket_present(const char *path)
{
    struct stat st;

    return path && (stat(path, &st) == 0 || (errno != ENOENT && errno != ENOTDIR));
}

/* ------------------------------------------------------------------------
 * JSON and tables
 */

/* s as a JSON string: valid UTF-8 whatever bytes s holds (a name handed
 * over by another user, a file name), so that every parser takes it.  A byte
 * that is not part of a well-formed character becomes U+FFFD; control
 * characters, C1 ones included, are escaped. */
void
json_str(const char *s)
{
    const unsigned char *p;
    size_t n;

    if (!s) {
        fputs("null", stdout);
        return;
    }
    putchar('"');
    for (p = (const unsigned char *)s; *p; p += n ? n : 1) {
        uint32_t c = *p;

        n = *p < 0x80 ? 1 : utf8_decode(p, &c);
        if (*p == '"' || *p == '\\')
            printf("\\%c", *p);
        else if (*p == '\n')
            fputs("\\n", stdout);
        else if (*p == '\t')
            fputs("\\t", stdout);
        else if (n == 0)
            fputs("\\ufffd", stdout);
        else if (c < 0x20 || c == 0x7f || (c >= 0x80 && unicode_hidden(c)))
            printf("\\u%04x", (unsigned)c); /* all in the BMP */
        else
            fwrite(p, 1, n, stdout);
    }
    putchar('"');
}

/* An empty string from the helper means "none given": JSON says null. */
const char *
or_null(const char *s)
{
    return s && *s ? s : NULL;
}

int
table_add(struct table *t, ...)
{
    va_list ap;
    size_t i;

    if (t->nrows == t->cap) {
        size_t cap = t->cap ? 2 * t->cap : 16;
        char **c = realloc(t->cells, cap * t->ncols * sizeof(*c));

        if (!c)
            return -ENOMEM;
        t->cells = c;
        t->cap = cap;
    }
    va_start(ap, t);
    for (i = 0; i < t->ncols; i++) {
        const char *s = va_arg(ap, const char *);

        char *cell = text_escaped(s && *s ? s : "-");

        t->cells[t->nrows * t->ncols + i] = cell;
    }
    va_end(ap);
    for (i = 0; i < t->ncols; i++)
        if (!t->cells[t->nrows * t->ncols + i]) {
            for (i = 0; i < t->ncols; i++)
                free(t->cells[t->nrows * t->ncols + i]);
            return -ENOMEM;
        }
    t->nrows++;
    return 0;
}

void
table_free(struct table *t)
{
    size_t i;

    for (i = 0; i < t->nrows * t->ncols; i++)
        free(t->cells[i]);
    free(t->cells);
    t->cells = NULL;
    t->nrows = t->cap = 0;
}

void
table_print(const struct table *t)
{
    size_t w[TABLE_COLS] = {0}, r, c;

    for (r = 0; r < t->nrows; r++)
        for (c = 0; c < t->ncols; c++) {
            size_t l = strlen(t->cells[r * t->ncols + c]);

            w[c] = l > w[c] ? l : w[c];
        }
    for (r = 0; r < t->nrows; r++)
        for (c = 0; c < t->ncols; c++) {
            const char *s = t->cells[r * t->ncols + c];

            if (c + 1 < t->ncols)
                printf("%-*s  ", (int)w[c], s);
            else
                printf("%s\n", s);
        }
}

const char *
mode_word(int mode)
{
    return mode == LOCKD_SHARED ? "shared"
           : mode == LOCKD_FREE ? "free"
           : mode == LOCKD_LOST ? "LOST"
                                : "exclusive";
}

/* ------------------------------------------------------------------------
 * Opening things, with the message when it fails
 */

/*
 * A lockspace named by --dir or LOCKD_DIR is created when missing, but only
 * its last component: a mistyped path ("/var/lib/lokcd/files") must not
 * become a whole new tree whose leases protect nothing, unseen.  The default
 * lockspace is created with its parents (a fresh host has none of them).
 */
static int
dir_typo(const struct opts *o, uint32_t flags)
{
    char *parent, *slash;
    struct stat st;
    int missing;

    if (!(flags & LOCKD_OPEN_CREATE) || !o->dir_given || stat(o->dir, &st) == 0 ||
        errno != ENOENT)
        return 0;
    parent = strdup(o->dir);
    if (!parent) {
        errorf("%s", strerror(ENOMEM));
        return EXIT_FAIL;
    }
    for (slash = parent + strlen(parent); slash > parent + 1 && slash[-1] == '/'; slash--)
        slash[-1] = '\0'; /* "dir/" names dir */
    slash = strrchr(parent, '/');
    if (slash == parent)
        slash[1] = '\0';
    else if (slash)
        *slash = '\0';
    missing = stat(parent, &st) < 0 && errno == ENOENT;
    if (missing)
        errorf("lockspace %s: no such directory, nor its parent %s (mistyped? create "
               "it with mkdir -p if it is new)",
               o->dir, parent);
    free(parent);
    return missing ? EXIT_FAIL : 0;
}

int
space_open(const struct opts *o, uint32_t flags, lockd_space **ret)
{
    lockd_space *probe = NULL;
    int r = no_lockspace(o);

    if (r != 0)
        return r;
    r = dir_typo(o, flags);
    if (r != 0)
        return r;
    r = lockd_space_open(o->dir, flags | o->mode_flag, ret);
    if (r == 0)
        return 0;
    if (r == -EMEDIUMTYPE && lockd_space_open(o->dir, LOCKD_OPEN_READONLY, &probe) == 0) {
        errorf("lockspace %s: its key mode is %s, and --key-mode asked for %s", o->dir,
               lockd_space_mode(probe) == LOCKD_MODE_CANONICAL ? "canonical" : "verbatim",
               o->mode_flag == LOCKD_OPEN_CANONICAL ? "canonical" : "verbatim");
        lockd_space_close(probe);
    } else if (r == -ENOENT)
        errorf("lockspace %s does not exist", o->dir);
    else if (r == -EPROTO)
        errorf("lockspace %s: %s is not a settings file this lockdctl understands",
               o->dir, SETTINGS_NAME);
    else
        errorf("lockspace %s: %s", o->dir, strerror(-r));
    return EXIT_FAIL;
}

/* Read-only uses say when the key mode is only assumed (DESIGN.md). */
void
note_unrecorded(const struct opts *o, const lockd_space *space)
{
    if (!lockd_space_recorded(space))
        errorf("note: lockspace %s records no key mode yet; assuming %s", o->dir,
               lockd_space_mode(space) == LOCKD_MODE_CANONICAL ? "canonical"
                                                               : "verbatim");
}

static int
conn_open(const struct opts *o, lockd_conn **ret)
{
    int r;

    if (!o->socket) {
        errorf("no helper socket: set XDG_RUNTIME_DIR, LOCKD_SOCKET or --socket");
        return EXIT_UNAVAILABLE;
    }
    r = lockd_conn_open(o->socket, ret);
    if (r == 0)
        return 0;
    if (r == -ENOENT)
        errorf("no helper at %s (is lockd-helper running?)", o->socket);
    else
        helper_error(o->socket, r);
    return helper_status(r);
}

/* ------------------------------------------------------------------------
 * Disks and their keys
 */

struct disk {
    char *name; /* the path (or resource string) */
    char key[LOCKD_BLOCK_KEY_SIZE]; /* in an lvm or scsi lockspace, the device's name */
    char list_key[LOCKD_KEY_SIZE];  /* the key the helper lists it under */
};

static void
disks_free(struct disk *d, size_t n)
{
    size_t i;

    for (i = 0; d && i < n; i++)
        free(d[i].name);
    free(d);
}

/* The key of one disk argument: a resource string is hashed as given; a path
 * is made absolute and keyed in the lockspace's mode.  space may be NULL for
 * a verbatim key without a lockspace (`key` before any lockspace exists). */
static int
disk_key(const struct opts *o, const lockd_space *space, const char *arg, struct disk *d)
{
    int r;

    if (!*arg)
        return -EINVAL;
    if (o->resource) {
        d->name = strdup(arg);
        if (!d->name)
            return -ENOMEM;
        r = lockd_key_resource(arg, strlen(arg), d->key);
        memcpy(d->list_key, d->key, LOCKD_KEY_SIZE);
        return r;
    }
    r = disk_path(arg, &d->name);
    if (r < 0)
        return r;
    if (!space)
        r = lockd_key_resource(d->name, strlen(d->name), d->key);
    else if (lockd_space_mode(space) >= LOCKD_MODE_LVM)
        /* Named by the device, raw, as virtlockd names it; the helper
         * lists it under the name's hash. */
        r = lockd_space_block_key(space, d->name, d->key, sizeof(d->key));
    else
        r = lockd_space_key(space, d->name, d->key);
    if (r == 0 && space && lockd_space_mode(space) >= LOCKD_MODE_LVM)
        r = lockd_key_resource(d->key, strlen(d->key), d->list_key);
    else if (r == 0)
        memcpy(d->list_key, d->key, LOCKD_KEY_SIZE);
    return r;
}

/*
 * What in an absolute path makes it a spelling of its own, or NULL.  In the
 * verbatim key mode the key is the path's bytes, as in virtlockd, and
 * libvirt passes a disk's <source file=...> or <source dev=...> to its lock
 * manager exactly as written (its XML parser folds nothing): "/a//x",
 * "/a/./x", "//a/x", "/a/x/" and "/b/../a/x" each have a lease apart from
 * "/a/x", so two guests whose XML spells one disk two ways are not kept
 * apart.  (A relative path given here was joined without "." and repeated
 * slashes already; its ".." stays.)
 */
static const char *
odd_spelling(const char *path)
{
    const char *p = path, *end;

    for (; *p; p = end) {
        end = strchr(p + 1, '/');
        end = end ? end : p + strlen(p);
        /* p points at a '/', the component runs to end. */
        if (end == p + 1 && *end)
            return "a repeated '/'";
        if (end == p + 1 && p != path) /* "/" alone is the root's one spelling */
            return "a trailing '/'";
        if (end - p == 2 && p[1] == '.')
            return "a '.' component";
        if (end - p == 3 && p[1] == '.' && p[2] == '.')
            return "a '..' component";
    }
    return NULL;
}

/* Say so when a disk is spelled in a way that gives it a lease apart from
 * the same file's plain spelling (verbatim keys only: canonical keys fold
 * every spelling on this host). */
static void
warn_spelling(const lockd_space *space, const struct disk *d)
{
    const char *why = odd_spelling(d->name);

    if (why && (!space || lockd_space_mode(space) == LOCKD_MODE_VERBATIM))
        errorf("warning: %s: spelled with %s; keys are taken from the path as written "
               "(as libvirt and virtlockd do), so this spelling has a lease of its own",
               d->name, why);
}

/* A usage error for an empty disk name: checked before anything is opened,
 * so that bad input creates nothing. */
static int
names_check(int argc, char **argv)
{
    int i;

    for (i = 0; i < argc; i++)
        if (!*argv[i])
            return usage_error("empty disk name");
    return 0;
}

/* Keys of argv[0..argc-1]; one line naming the disk if one fails. */
static int
disks_parse(const struct opts *o, const lockd_space *space, int argc, char **argv,
            struct disk **ret)
{
    struct disk *d;
    int i, r;

    r = names_check(argc, argv);
    if (r != 0)
        return r;
    d = calloc((size_t)argc, sizeof(*d));
    if (!d) {
        errorf("%s", strerror(ENOMEM));
        return EXIT_FAIL;
    }
    for (i = 0; i < argc; i++) {
        r = disk_key(o, space, argv[i], &d[i]);
        if (r < 0) {
            if (r == -ENODATA && space)
                errorf(
                    "%s: has no %s name (not a block device %s), so virtlockd would not "
                    "name its lease in lockspace %s either",
                    d[i].name ? d[i].name : argv[i],
                    lockd_space_mode(space) == LOCKD_MODE_LVM ? "LVM" : "SCSI",
                    lockd_space_mode(space) == LOCKD_MODE_LVM
                        ? "spelled /dev/VG/LV or /dev/mapper/VG-LV of an active LV"
                        : "with a SCSI id in its VPD pages",
                    lockd_space_dir(space));
            else
                errorf("%s: %s", d[i].name ? d[i].name : argv[i],
                       r == -ENOENT ? "no such directory, or a dangling symlink"
                                    : lease_reason(r));
            disks_free(d, (size_t)argc);
            return EXIT_FAIL;
        }
        if (!o->resource && !o->direct)
            warn_spelling(space, &d[i]);
    }
    *ret = d;
    return 0;
}

/*
 * run and acquire take a lease on a disk image that exists: a mistyped name
 * ("web1.qcwo2") would be protected while the real image is not.  A disk
 * that is created after its lease is taken says so with --create-ok; a
 * resource string names no file; a block device's name needed the device.
 */
static int
disks_exist(const struct opts *o, int argc, char **argv)
{
    struct stat st;
    char *path;
    int i, missing;

    if (o->create_ok || o->resource || o->direct || o->mode_flag == LOCKD_OPEN_LVM ||
        o->mode_flag == LOCKD_OPEN_SCSI)
        return 0;
    for (i = 0; i < argc; i++) {
        if (disk_path(argv[i], &path) < 0)
            continue; /* disks_parse() says why */
        missing = stat(path, &st) < 0 && (errno == ENOENT || errno == ENOTDIR);
        if (missing)
            errorf("%s: no such file (give --create-ok if it is created after its lease "
                   "is taken)",
                   path);
        free(path);
        if (missing)
            return EXIT_FAIL;
    }
    return 0;
}

/* The disk's display name for lease i of lease (which sorted and merged the
 * keys): the first disk argument with that key. */
static const char *
disk_of_key(const struct disk *d, size_t n, const char *key)
{
    size_t i;

    for (i = 0; i < n; i++)
        if (strcmp(d[i].key, key) == 0)
            return d[i].name;
    return NULL;
}

/* ------------------------------------------------------------------------
 * Who holds a lease: the helper's view where it has one
 */

int
holder_row(void *userdata, uint64_t id, int mode, const char *key, const char *disk,
           int32_t pid, uint32_t uid, const char *uuid, const char *name)
{
    struct holders *h = userdata;
    size_t len = strlen(h->text);

    (void)id, (void)key, (void)disk, (void)uid;
    if (mode == LOCKD_LOST) /* the helper keeps its record, not its lock */
        return 0;
    snprintf(h->text + len, sizeof(h->text) - len, "%s%s%s(pid %d%s%s)",
             h->count ? ", " : "", *name ? name : "", *name ? " " : "", (int)pid,
             *uuid ? ", uuid " : "", uuid);
    h->count++;
    return 0;
}

/* "14:02:07" today, else "2026-12-06 14:02:07", local time. */
static void
since_text(int64_t t, char *buf, size_t size)
{
    time_t when = (time_t)t, now = time(NULL);
    struct tm a, b;

    localtime_r(&when, &a);
    localtime_r(&now, &b);
    strftime(buf, size, a.tm_yday == b.tm_yday && a.tm_year == b.tm_year ? "%H:%M:%S"
                                                                          : "%Y-%m-%d %H:%M:%S",
             &a);
}

/* The holder record of key, for a message: "web1 (uuid U, pid 4242) on host
 * hv2 since 10:42:07".  -ENODATA or another error if there is none. */
int
record_text(const lockd_space *space, const char *key, char *buf, size_t size)
{
    lockd_holder_info hi;
    char since[32];
    int r = lockd_holder(space, key, &hi);

    if (r < 0)
        return r;
    since_text(hi.since, since, sizeof(since));
    /* Cut to size if it must be: a message, not a record. */
    r = snprintf(buf, size, "%s%s(%s%s%spid %d) on host %s since %s", hi.owner,
                 *hi.owner ? " " : "", *hi.uuid ? "uuid " : "", hi.uuid,
                 *hi.uuid ? ", " : "", (int)hi.pid, *hi.host ? hi.host : "?", since);
    return r < 0 ? -EINVAL : 0;
}

/* Whether disk d is held: its lease in space, or, without one (--direct),
 * the lock on the disk itself. */
static int
probe_disk(const lockd_space *space, const struct disk *d, int32_t *ret_pid)
{
    return space ? lockd_probe(space, d->key, ret_pid)
                 : lockd_probe_direct(d->name, ret_pid);
}

/* lockd_acquire(), or lockd_acquire_direct() of the paths in keys without
 * a lockspace (--direct). */
static int
acquire(lockd_space *space, size_t n, const char *const *keys, const int *modes,
        int wait_ms, lockd_lease **ret)
{
    return space ? lockd_acquire(space, n, keys, modes, wait_ms, ret)
                 : lockd_acquire_direct(n, keys, modes, wait_ms, ret);
}

/*
 * Describe who holds key, for a busy message: "held exclusively by guest-a
 * (pid 12)", or from the lease's holder record "held exclusively by web1
 * (uuid ..., pid 4242) on host hv2 since 10:42:07".  conn may be NULL (no helper); the kernel then knows a pid only
 * for a classic POSIX lock (virtlockd's).
 */
static void
describe_holder(const lockd_space *space, lockd_conn *conn, const struct disk *d,
                char *buf, size_t size)
{
    struct holders h = {.count = 0};
    const char *key = d->key;
    int32_t pid = 0;
    int state = probe_disk(space, d, &pid);
    const char *how = state == LOCKD_SHARED ? "shared" : "exclusively";

    h.text[0] = '\0';
    if (conn && (!space || lockd_conn_bind(conn, space) == 0))
        (void)lockd_conn_list(conn, 0, d->list_key, holder_row, &h);
    if (state == LOCKD_FREE && h.count == 0) {
        snprintf(buf, size, "it was released meanwhile; try again");
        return;
    }
    if (h.count > 0)
        snprintf(buf, size, "held %s by %s", how, h.text);
    else if (state == LOCKD_EXCLUSIVE && pid <= 0 && space &&
             record_text(space, key, h.text, sizeof(h.text)) == 0)
        snprintf(buf, size, "held exclusively by %s", h.text);
    else if (pid > 0)
        snprintf(buf, size,
                 "held %s by pid %d (a classic POSIX lock, as virtlockd takes)", how,
                 (int)pid);
    else if (conn)
        snprintf(
            buf, size,
            "held %s by a holder the helper does not know (another host, or a process "
            "holding it without the helper)",
            how);
    else
        snprintf(buf, size, "held %s (no helper here to name the holder)", how);
}

/* Which disk made an acquire fail: the first whose lease conflicts (busy) or
 * fails the same way on its own.  Falls back to the first disk. */
static size_t
culprit(const lockd_space *space, const struct disk *d, size_t n, int shared, int r)
{
    size_t i;

    for (i = 0; i < n; i++) {
        int s = probe_disk(space, &d[i], NULL);
        struct stat st;

        /* -EINPROGRESS comes from creating a lease file: the first disk
         * whose file is missing. */
        if (r == -EINPROGRESS && space &&
            fstatat(lockd_space_fd(space), d[i].key, &st, AT_SYMLINK_NOFOLLOW) < 0 &&
            errno == ENOENT)
            return i;
        if ((r == -EAGAIN || r == -ETIMEDOUT) &&
            (s == LOCKD_EXCLUSIVE || (s == LOCKD_SHARED && !shared)))
            return i;
        if (s == r)
            return i;
    }
    return 0;
}

struct gone {
    size_t alive, dead;
};

static int
gone_row(void *userdata, uint64_t id, int mode, const char *key, const char *disk,
         int32_t pid, uint32_t uid, const char *uuid, const char *name)
{
    struct gone *g = userdata;

    (void)id, (void)key, (void)disk, (void)uid, (void)uuid, (void)name;
    if (mode == LOCKD_LOST)
        return 0;
    if (kill(pid, 0) == 0 || errno == EPERM)
        g->alive++;
    else
        g->dead++;
    return 0;
}

/*
 * Whether every holder of key the helper knows is a process that has exited
 * and been reaped.  The helper releases an owner's leases when its pidfd
 * says so, a moment after the exit: a script that runs `lockdctl run DISK`
 * twice in a row must not see the first, finished, command as the holder.
 */
static int
holders_gone(lockd_conn *conn, const char *key)
{
    /* key: as the helper lists it (struct disk's list_key). */
    struct gone g = {0, 0};

    return conn && lockd_conn_list(conn, 0, key, gone_row, &g) == 0 && g.dead > 0 &&
           g.alive == 0;
}

/*
 * Whether a busy acquire is worth another try: the helper holds the
 * conflicting lease only for owners that are gone, or it was released since
 * (by its holder, or by the helper meanwhile).  The helper is asked first:
 * it drops an owner's rows only once it has unlocked its leases, so a probe
 * after an empty listing cannot miss a release that the listing raced with.
 */
static int
worth_retrying(const lockd_space *space, lockd_conn *conn, const struct disk *d)
{
    return holders_gone(conn, d->list_key) || probe_disk(space, d, NULL) == LOCKD_FREE;
}

/* How many times a try that met a long gc batch (-EINPROGRESS) is made. */
#define GC_TRIES 10

/* How long to give the helper to release the leases of exited owners. */
#define HELPER_GRACE_MS 2000

int64_t
now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/*
 * Take the leases for run and acquire, with the message and exit status when
 * that fails.  Busy (or a wait that ran out) names the disk and its holder.
 */
static int
take(const struct opts *o, lockd_space *space, lockd_conn *conn, const struct disk *d,
     size_t n, lockd_lease **ret)
{
    const char **keys = calloc(n, sizeof(*keys));
    int *modes = calloc(n, sizeof(*modes));
    int64_t grace_end = 0;
    char why[1200];
    size_t i, bad;
    int r;

    if (!keys || !modes) {
        free(keys), free(modes);
        errorf("%s", strerror(ENOMEM));
        return EXIT_FAIL;
    }
    for (i = 0; i < n; i++) {
        /* Direct leases (no lockspace) are named by their paths. */
        keys[i] = space ? d[i].key : d[i].name;
        modes[i] = o->shared ? LOCKD_SHARED : LOCKD_EXCLUSIVE;
    }
    /* -EINPROGRESS: a gc held the index past LOCKD_INDEX_WAIT_MS, which says
     * nothing about the leases; give it a few more chances. */
    for (i = 0; i < GC_TRIES; i++)
        if ((r = acquire(space, n, keys, modes, o->wait_ms, ret)) != -EINPROGRESS)
            break;
    while ((r == -EAGAIN || r == -ETIMEDOUT) &&
           worth_retrying(space, conn, &d[culprit(space, d, n, o->shared, r)])) {
        int64_t now = now_ms();

        grace_end = grace_end ? grace_end : now + HELPER_GRACE_MS;
        if (now >= grace_end)
            break;
        r = acquire(space, n, keys, modes, (int)(grace_end - now), ret);
    }
    free(keys);
    free(modes);
    if (r == 0)
        return 0;
    /* Without --wait only the grace retry has a timeout: running out of it
     * is plain busy, not a wait the user asked for. */
    if (r == -ETIMEDOUT && o->wait_ms == LOCKD_TRY)
        r = -EAGAIN;
    bad = culprit(space, d, n, o->shared, r);
    if (r == -EAGAIN || r == -ETIMEDOUT) {
        describe_holder(space, conn, &d[bad], why, sizeof(why));
        if (r == -ETIMEDOUT && o->wait_text && *o->wait_text)
            errorf("%s: still busy after %s s: %s", d[bad].name, o->wait_text, why);
        else if (r == -ETIMEDOUT)
            errorf("%s: still busy after waiting: %s", d[bad].name, why);
        else
            errorf("%s: busy: %s", d[bad].name, why);
        return o->conflict_code;
    }
    if (r == -EINPROGRESS) {
        errorf("%s: cannot take its lease: %s", d[bad].name, lease_reason(r));
        return EXIT_BUSY;
    }
    if (!space && (r == -ENXIO || r == -EISDIR))
        errorf("%s: cannot take its direct lease: %s", d[bad].name,
               r == -EISDIR ? "a directory, not a disk"
                            : "neither a regular file nor a block device");
    else if (!space)
        errorf("%s: cannot take its direct lease: %s", d[bad].name, strerror(-r));
    else if (r == -EROFS || r == -EACCES)
        errorf("%s: cannot take its lease: lockspace %s: %s", d[bad].name, o->dir,
               strerror(-r));
    else
        errorf("%s: cannot take its lease: %s", d[bad].name, lease_reason(r));
    return EXIT_FAIL;
}

/*
 * Give the leases in lease to the helper for owner pid (pidfd, or -1), under
 * the names of the disks.  On success the helper is their only holder: this
 * process has forgotten its copies.  On failure they are released.
 */
static int
hand_over(const struct opts *o, lockd_conn *conn, int32_t pid, int pidfd,
          const char *name, const char *uuid, const struct disk *d, size_t n,
          lockd_lease *lease, uint64_t *ret_ids)
{
    const char **names = calloc(n, sizeof(*names));
    size_t i;
    int r;

    if (!names) {
        lockd_lease_release(lease);
        errorf("%s", strerror(ENOMEM));
        return EXIT_FAIL;
    }
    /* In the order the keys were given to lockd_acquire() (take()). */
    for (i = 0; i < n; i++)
        names[i] = d[i].name;
    (void)lockd_lease_set_holder(lease, name, uuid, pid, names);
    r = lockd_conn_register_on_loss(conn, pid, pidfd, o->uuid, name, o->on_loss, o->on_loss_cmd);
    if (r == 0)
        r = lockd_conn_handoff(conn, pid, lease, names, ret_ids);
    free(names);
    if (r < 0) {
        lockd_lease_release(lease);
        if (r == -EDQUOT) {
            errorf("%s: the helper holds as many leases for your user as it allows",
                   d[0].name);
            return EXIT_FAIL;
        }
        if (r == -EBADFD) {
            errorf("%s: the helper refused the lease fds as not locked", d[0].name);
            return EXIT_FAIL;
        }
        return owner_error(o, pid, r);
    }
    lockd_lease_forget(lease);
    return 0;
}

/* ------------------------------------------------------------------------
 * key
 */

/* key --key-mode lvm|scsi without a lockspace: the devices' names, which
 * need none (nothing is recorded to agree with). */
static int
key_block_names(const struct opts *o, int argc, char **argv)
{
    int mode = o->mode_flag == LOCKD_OPEN_LVM ? LOCKD_MODE_LVM : LOCKD_MODE_SCSI;
    char name[LOCKD_BLOCK_KEY_SIZE];
    int i, r;

    if (o->json)
        printf("{\"key_mode\":\"%s\",\"recorded\":false,\"keys\":[",
               mode == LOCKD_MODE_LVM ? "lvm" : "scsi");
    for (i = 0; i < argc; i++) {
        r = lockd_block_key(NULL, argv[i], mode, name, sizeof(name));
        if (r < 0) {
            if (o->json)
                printf("]}\n");
            errorf("%s: %s", argv[i],
                   r == -ENODATA
                       ? (mode == LOCKD_MODE_LVM
                              ? "has no LVM name (not an LV spelled /dev/VG/LV or "
                                "/dev/mapper/VG-LV)"
                              : "has no SCSI name (no SCSI id in its VPD pages)")
                   : r == -EINVAL ? "not an absolute path"
                                  : strerror(-r));
            return EXIT_FAIL;
        }
        if (o->json) {
            printf("%s{\"name\":", i ? "," : "");
            json_str(argv[i]);
            printf(",\"key\":");
            json_str(name);
            putchar('}');
        } else {
            printf("%s  ", name);
            put_text(stdout, argv[i]);
            putchar('\n');
        }
    }
    if (o->json)
        printf("]}\n");
    return 0;
}

static int
cmd_key(const struct opts *o, int argc, char **argv)
{
    lockd_space *space = NULL;
    struct disk *d = NULL;
    int i, r, mode = LOCKD_MODE_VERBATIM, recorded = 0;

    if (argc == 0)
        return usage_error("key: no disk or resource given");
    if (!o->resource) {
        r = o->dir ? lockd_space_open(o->dir, LOCKD_OPEN_READONLY | o->mode_flag, &space)
                   : -ENOENT;
        /* A verbatim key is the path's own hash and needs no lockspace, so
         * keys can be computed before one exists; a canonical one, or a
         * broken lockspace, is reported. */
        if (r == -ENOENT &&
            (o->mode_flag == LOCKD_OPEN_LVM || o->mode_flag == LOCKD_OPEN_SCSI))
            return key_block_names(o, argc, argv);
        if (r == -ENOENT && o->mode_flag != LOCKD_OPEN_CANONICAL && !o->dir)
            errorf("note: no lockspace given; assuming verbatim keys");
        else if (r == -ENOENT && o->mode_flag != LOCKD_OPEN_CANONICAL)
            errorf("note: lockspace %s does not exist; assuming verbatim keys", o->dir);
        else if (r < 0)
            return space_open(o, LOCKD_OPEN_READONLY, &space);
        else {
            note_unrecorded(o, space);
            mode = lockd_space_mode(space);
            recorded = lockd_space_recorded(space);
        }
    }
    r = disks_parse(o, space, argc, argv, &d);
    lockd_space_close(space);
    if (r != 0)
        return r;
    if (o->json) {
        static const char *const words[] = {"verbatim", "canonical", "lvm", "scsi"};

        printf("{\"key_mode\":\"%s\",\"recorded\":%s,\"keys\":[",
               o->resource ? "resource" : words[mode], recorded ? "true" : "false");
        for (i = 0; i < argc; i++) {
            printf("%s{\"name\":", i ? "," : "");
            json_str(d[i].name);
            printf(",\"key\":"); /* a SCSI name may hold a backslash */
            json_str(d[i].key);
            putchar('}');
        }
        printf("]}\n");
    } else
        for (i = 0; i < argc; i++) {
            /* A resource string is anything: a newline in one must not
             * forge a line of this output. */
            put_text(stdout, d[i].key);
            fputs("  ", stdout);
            put_text(stdout, d[i].name);
            putchar('\n');
        }
    disks_free(d, (size_t)argc);
    return 0;
}

/* ------------------------------------------------------------------------
 * run
 */

/* Let CMD inherit the lease fds (no helper): they hold the leases as long as
 * CMD, or a child it leaves them to, keeps them open. */
static int
lease_inherit(lockd_lease *lease)
{
    size_t i;

    for (i = 0; i < lockd_lease_count(lease); i++) {
        int fd = lockd_lease_fd(lease, i), fl = fcntl(fd, F_GETFD);

        if (fl < 0 || fcntl(fd, F_SETFD, fl & ~FD_CLOEXEC) < 0)
            return -errno;
    }
    return 0;
}

static int
exec_cmd(char **cmd)
{
    int e;

    fflush(NULL);
    execvp(cmd[0], cmd);
    e = errno;
    errorf("%s: %s", cmd[0], strerror(e));
    return e == ENOENT ? 127 : 126;
}

/*
 * run DISK... -- CMD: take the leases, then become CMD.  With a helper, the
 * leases go to it with this process (CMD, after the exec) as their owner, so
 * they end when CMD exits whatever else holds a copy; this process keeps no
 * copy.  Without one, CMD inherits the fds.  Either way CMD's exit status is
 * the one the caller sees, because CMD is this process.
 */
static int
cmd_run(const struct opts *o, int ndisks, char **disks, char **cmd)
{
    const char *base = strrchr(cmd[0], '/');
    const char *owner = o->name ? o->name : base ? base + 1 : cmd[0];
    lockd_space *space = NULL;
    lockd_conn *conn = NULL;
    lockd_lease *lease = NULL;
    struct disk *d = NULL;
    int r, ex;

    /* Connect before the lockspace is created, as acquire does: a socket
     * that is there but does not answer fails run (69) without leaving a
     * new lockspace behind.  No socket at all means no helper to use. */
    r = o->direct ? 0 : no_lockspace(o);
    if (r == 0)
        r = disks_exist(o, ndisks, disks);
    if (r != 0)
        return r;
    if (socket_present(o->socket) && (r = conn_open(o, &conn)) != 0)
        return r;
    r = o->direct ? 0 : space_open(o, LOCKD_OPEN_CREATE, &space);
    if (r != 0)
        goto out;
    r = disks_parse(o, space, ndisks, disks, &d);
    if (r != 0)
        goto out;
    r = take(o, space, conn, d, (size_t)ndisks, &lease);
    if (r != 0)
        goto out;
    if (conn) {
        r = hand_over(o, conn, getpid(), -1, owner, o->uuid, d, (size_t)ndisks, lease,
                      NULL);
        /* Only watched for: CMD runs protected all the same. */
        if (r == 0)
            (void)run_orphan_check_start(cmd[0]);
    } else if ((r = lease_inherit(lease)) < 0) {
        errorf("%s: cannot pass its lease to %s: %s", d[0].name, cmd[0], strerror(-r));
        lockd_lease_release(lease);
        r = EXIT_FAIL;
    } else {
        const char **names = calloc((size_t)ndisks, sizeof(*names));
        int i;

        for (i = 0; names && i < ndisks; i++)
            names[i] = d[i].name;
        if (names)
            (void)lockd_lease_set_holder(lease, owner, o->uuid, getpid(), names);
        r = names ? run_watch_start(o, lease, names, (size_t)ndisks, cmd[0]) : -ENOMEM;
        free(names);
        /* CMD still holds its leases; only their loss would go unseen. */
        if (r < 0)
            errorf("%s: lease loss not watched: %s", d[0].name, strerror(-r));
        r = 0;
    }
    if (r != 0)
        goto out;
    lockd_space_close(space);
    space = NULL;
    ex = exec_cmd(cmd);
    /* The exec failed: let go of what CMD should have held. */
    if (conn)
        (void)lockd_conn_release(conn, getpid(), 0, NULL);
    else
        lockd_lease_release(lease);
    r = ex;
out:
    lockd_conn_close(conn);
    disks_free(d, (size_t)ndisks);
    lockd_space_close(space);
    return r;
}

/* run's operands: DISK... -- CMD [ARG...].  The "--" is required, since both
 * sides are lists; getopt has moved every option before it out of the way. */
static int
cmd_run_args(const struct opts *o, int argc, char **argv)
{
    int dd;

    for (dd = 0; dd < argc && strcmp(argv[dd], "--") != 0; dd++)
        ;
    if (dd == argc)
        return usage_error("run: '--' and a command must follow the disks");
    if (dd + 1 == argc)
        return usage_error("run: no command after '--'");
    if (dd == 0)
        return usage_error("run: no disk given");
    return cmd_run(o, dd, argv, argv + dd + 1);
}

/* ------------------------------------------------------------------------
 * acquire --pid, release --pid
 */

static int
pidfd_of(int32_t pid)
{
    return (int)syscall(SYS_pidfd_open, (pid_t)pid, 0);
}

/* What acquire --json reports: copied before hand_over() forgets the lease. */
struct taken {
    char key[LOCKD_BLOCK_KEY_SIZE];
    int mode;
    const char *disk;
};

static void
print_taken(int32_t pid, const struct taken *t, const uint64_t *ids, size_t n)
{
    size_t i;

    printf("{\"pid\":%d,\"leases\":[", (int)pid);
    for (i = 0; i < n; i++) {
        printf("%s{\"id\":%" PRIu64 ",\"disk\":", i ? "," : "", ids[i]);
        json_str(t[i].disk);
        printf(",\"key\":");
        json_str(t[i].key);
        printf(",\"mode\":\"%s\"}", mode_word(t[i].mode));
    }
    printf("]}\n");
}

/*
 * acquire --pid PID DISK...: take the leases here and hand them to the
 * helper with PID as their owner; they end when PID exits or release says.
 */
/* The name and uuid of a registered owner, by pid. */
struct owner_id {
    int32_t pid;
    char name[LOCKD_OWNER_NAME_MAX + 1];
    char uuid[37];
};

static int
owner_known(void *userdata, int32_t pid, uint32_t uid, const char *uuid, const char *name,
            uint32_t leases)
{
    struct owner_id *w = userdata;

    (void)uid, (void)leases;
    if (pid == w->pid) {
        snprintf(w->name, sizeof(w->name), "%s", name ? name : "");
        snprintf(w->uuid, sizeof(w->uuid), "%s", uuid ? uuid : "");
    }
    return 0;
}

static int
cmd_acquire(const struct opts *o, int argc, char **argv)
{
    struct owner_id who = {.pid = o->pid};
    lockd_space *space = NULL;
    lockd_conn *conn = NULL;
    lockd_lease *lease = NULL;
    struct disk *d = NULL;
    struct taken *t = NULL;
    uint64_t *ids = NULL;
    int pidfd = -1, r;
    size_t i, n = 0;

    if (o->pid <= 0)
        return usage_error("acquire: --pid PID is required");
    if (argc == 0)
        return usage_error("acquire: no disk given");
    /* A pidfd taken now pins the process: if it exits meanwhile, the helper
     * sees it dead instead of a stranger that reused its pid. */
    pidfd = pidfd_of(o->pid);
    /* Without pidfd_open(2) (before Linux 5.3, or under valgrind) the helper
     * opens the pidfd itself, from the pid; check the process is there. */
    if (pidfd < 0 && errno == ENOSYS && (kill(o->pid, 0) == 0 || errno == EPERM))
        errno = 0;
    if (pidfd < 0 && errno != 0) {
        errorf("pid %d: %s", (int)o->pid,
               errno == ESRCH ? "no such process" : strerror(errno));
        return EXIT_FAIL;
    }
    r = disks_exist(o, argc, argv);
    if (r == 0)
        r = conn_open(o, &conn);
    if (r == 0 && !o->direct)
        r = space_open(o, LOCKD_OPEN_CREATE, &space);
    if (r == 0)
        r = disks_parse(o, space, argc, argv, &d);
    if (r == 0)
        r = take(o, space, conn, d, (size_t)argc, &lease);
    if (r != 0)
        goto out;
    n = lockd_lease_count(lease);
    ids = calloc(n, sizeof(*ids));
    t = calloc(n, sizeof(*t));
    if (!ids || !t) {
        lockd_lease_release(lease);
        errorf("%s", strerror(ENOMEM));
        r = EXIT_FAIL;
        goto out;
    }
    for (i = 0; i < n; i++) {
        memcpy(t[i].key, lockd_lease_key(lease, i), LOCKD_KEY_SIZE);
        t[i].mode = lockd_lease_mode(lease, i);
        t[i].disk = disk_of_key(d, (size_t)argc, t[i].key);
    }
    /* A second acquire for a guest (a hot-plugged disk) that names no owner
     * keeps the one it has, in the helper and in the new leases' records. */
    if (!o->name || !o->uuid)
        (void)lockd_conn_owners(conn, owner_known, &who);
    r = hand_over(o, conn, o->pid, pidfd, o->name ? o->name : or_null(who.name),
                  o->uuid ? o->uuid : or_null(who.uuid), d, (size_t)argc, lease, ids);
    if (r == 0 && o->json)
        print_taken(o->pid, t, ids, n);
out:
    free(ids);
    free(t);
    if (pidfd >= 0)
        close(pidfd);
    lockd_conn_close(conn);
    disks_free(d, (size_t)argc);
    lockd_space_close(space);
    return r;
}

struct id_list {
    const char *key;
    uint64_t id;
    int found;
};

static int
id_row(void *userdata, uint64_t id, int mode, const char *key, const char *disk,
       int32_t pid, uint32_t uid, const char *uuid, const char *name)
{
    struct id_list *l = userdata;

    (void)mode, (void)disk, (void)pid, (void)uid, (void)uuid, (void)name;
    if (strcmp(key, l->key) == 0) {
        l->id = id;
        l->found = 1;
    }
    return 0;
}

/*
 * release --pid PID [DISK...]: all of the owner's leases, or those of the
 * disks named.  All or nothing: a disk the owner does not hold is an error
 * and nothing is released.
 */
static int
cmd_release(const struct opts *o, int argc, char **argv)
{
    lockd_space *space = NULL;
    lockd_conn *conn = NULL;
    struct disk *d = NULL;
    uint64_t *ids = NULL;
    int i, r;

    if (o->pid <= 0)
        return usage_error("release: --pid PID is required");
    r = conn_open(o, &conn);
    if (r == 0 && argc > 0)
        r = space_open(o, LOCKD_OPEN_READONLY, &space);
    if (r == 0 && argc > 0)
        r = disks_parse(o, space, argc, argv, &d);
    if (r == 0 && argc > 0 && !(ids = calloc((size_t)argc, sizeof(*ids)))) {
        errorf("%s", strerror(ENOMEM));
        r = EXIT_FAIL;
    }
    for (i = 0; r == 0 && i < argc; i++) {
        struct id_list l = {.key = d[i].list_key};
        int e = lockd_conn_list(conn, o->pid, d[i].list_key, id_row, &l);

        if (e < 0)
            r = owner_error(o, o->pid, e);
        else if (!l.found) {
            errorf("%s: pid %d holds no lease of it through the helper; nothing released",
                   d[i].name, (int)o->pid);
            r = EXIT_FAIL;
        } else
            ids[i] = l.id;
    }
    if (r == 0) {
        int e = lockd_conn_release(conn, o->pid, (size_t)argc, ids);

        r = e < 0 ? owner_error(o, o->pid, e) : 0;
    }
    free(ids);
    lockd_conn_close(conn);
    disks_free(d, (size_t)argc);
    lockd_space_close(space);
    return r;
}

/* ------------------------------------------------------------------------
 * status
 */

struct status_ctx {
    const struct opts *o;
    struct table t;
    size_t rows;
};

static int
status_row(void *userdata, uint64_t id, int mode, const char *key, const char *disk,
           int32_t pid, uint32_t uid, const char *uuid, const char *name)
{
    struct status_ctx *c = userdata;
    char spid[16];

    if (c->o->json) {
        printf("%s{\"id\":%" PRIu64 ",\"pid\":%d,\"uid\":%u,\"name\":",
               c->rows ? "," : "", id, (int)pid, uid);
        json_str(or_null(name));
        fputs(",\"uuid\":", stdout);
        json_str(or_null(uuid));
        printf(",\"mode\":\"%s\",\"disk\":", mode_word(mode));
        json_str(or_null(disk));
        printf(",\"key\":\"%s\"}", key);
    } else {
        snprintf(spid, sizeof(spid), "%d", (int)pid);
        if (table_add(&c->t, spid, name, uuid, mode_word(mode), disk, key) < 0)
            return -ENOMEM;
    }
    c->rows++;
    return 0;
}

/* Owners that hold a lease, and those registered that hold none (all of a
 * guest's leases released, the guest still running). */
struct owner_count {
    uint64_t holding, idle;
};

static int
owner_counted(void *userdata, int32_t pid, uint32_t uid, const char *uuid,
              const char *name, uint32_t leases)
{
    struct owner_count *c = userdata;

    (void)pid, (void)uid, (void)uuid, (void)name;
    if (leases > 0)
        c->holding++;
    else
        c->idle++;
    return 0;
}

static int
cmd_status(const struct opts *o, int argc, char **argv)
{
    struct owner_count oc = {0, 0};
    struct status_ctx c = {.o = o, .t = {.ncols = 6}};
    uint64_t owners = 0, leases = 0, stored = 0;
    char stuck[8192], *line, *end;
    lockd_conn *conn = NULL;
    int r, nstuck;

    (void)argv;
    if (argc > 0)
        return usage_error("status: takes no arguments");
    r = conn_open(o, &conn);
    if (r != 0)
        return r;
    r = lockd_conn_status(conn, &owners, &leases, &stored);
    /* The total counts owners by the leases they hold: one whose leases
     * were all released is no guest protected. */
    if (r == 0)
        r = lockd_conn_owners(conn, owner_counted, &oc);
    if (r == 0)
        owners = oc.holding;
    if (r == 0 && o->json)
        printf("{\"owners\":%" PRIu64 ",\"idle_owners\":%" PRIu64 ",\"leases\":%" PRIu64
               ",\"stored\":%" PRIu64 ",\"held\":[",
               owners, oc.idle, leases, stored);
    else if (r == 0)
        r = table_add(&c.t, "PID", "NAME", "UUID", "MODE", "DISK", "KEY");
    if (r == 0)
        r = lockd_conn_list(conn, 0, NULL, status_row, &c);
    /* A filesystem the helper waits on (a hung NFS server, a stalled FUSE
     * daemon): its leases are freed when it answers. */
    nstuck = r == 0 ? lockd_conn_stuck(conn, stuck, sizeof(stuck)) : 0;
    if (nstuck < 0)
        stuck[0] = '\0';
    if (r == 0 && o->json) {
        printf("],\"stuck\":[");
        for (line = stuck; *line; line = end + 1) {
            end = strchr(line, '\n');
            if (!end)
                break;
            *end = '\0';
            printf("%s", line == stuck ? "" : ",");
            json_str(line);
        }
        printf("]}\n");
    } else if (r == 0) {
        if (c.rows > 0)
            table_print(&c.t);
        printf("%" PRIu64 " owner%s, %" PRIu64 " lease%s held, %" PRIu64
               " in systemd's fd store",
               owners, owners == 1 ? "" : "s", leases, leases == 1 ? "" : "s", stored);
        if (oc.idle)
            printf(" (and %" PRIu64 " registered owner%s holding none)", oc.idle,
                   oc.idle == 1 ? "" : "s");
        putchar('\n');
        for (line = stuck; *line; line = end + 1) {
            end = strchr(line, '\n');
            if (!end)
                break;
            *end = '\0';
            fputs("stuck filesystem: ", stdout);
            put_text(stdout, line);
            putchar('\n');
        }
    } else {
        helper_error(o->socket, r);
        r = helper_status(r);
    }
    table_free(&c.t);
    lockd_conn_close(conn);
    return r;
}

/* ------------------------------------------------------------------------
 * who
 */

int
who_row(void *userdata, uint64_t id, int mode, const char *key, const char *disk,
        int32_t pid, uint32_t uid, const char *uuid, const char *name)
{
    struct who_ctx *c = userdata;
    char spid[16];

    (void)key, (void)disk, (void)uid;
    /* A lease the helper keeps whose lock is gone holds nothing: shown as
     * LOST, never counted as a holder. */
    if (c->o->json) {
        printf("%s{\"pid\":%d,\"name\":", c->rows ? "," : "", (int)pid);
        json_str(or_null(name));
        fputs(",\"uuid\":", stdout);
        json_str(or_null(uuid));
        printf(",\"id\":%" PRIu64 ",\"host\":", id);
        json_str(c->host);
        printf("%s}", mode == LOCKD_LOST ? ",\"lost\":true" : "");
    } else {
        snprintf(spid, sizeof(spid), "%d", (int)pid);
        if (table_add(c->t, c->disk, mode == LOCKD_LOST ? "LOST" : c->state, spid, name, uuid,
                      c->host) < 0)
            return -ENOMEM;
    }
    c->rows++;
    c->count += mode != LOCKD_LOST;
    return 0;
}

/* A holder record as JSON. */
void
record_json(const lockd_holder_info *hi)
{
    printf("{\"host\":");
    json_str(hi->host);
    printf(",\"machine_id\":");
    json_str(hi->machine_id);
    printf(",\"owner\":");
    json_str(or_null(hi->owner));
    printf(",\"uuid\":");
    json_str(or_null(hi->uuid));
    printf(",\"pid\":%d,\"since\":%lld,\"version\":", (int)hi->pid, (long long)hi->since);
    json_str(hi->version);
    printf(",\"epoch\":\"%016llx\",\"generation\":%llu,\"resource\":",
           (unsigned long long)hi->epoch, (unsigned long long)hi->generation);
    json_str(or_null(hi->resource));
    putchar('}');
}

/* The holder the helper does not name, as a JSON object of who's
 * "holders" (after a comma if comma): the one hi records, or without a
 * record (hi NULL) the pid of a classic POSIX lock. */
void
holder_json(const lockd_holder_info *hi, int32_t pid, int comma)
{
    if (!hi) {
        printf("%s{\"pid\":%d,\"name\":null,\"uuid\":null,\"id\":null,\"host\":null}",
               comma ? "," : "", (int)pid);
        return;
    }
    printf("%s{\"pid\":%d,\"name\":", comma ? "," : "", (int)hi->pid);
    json_str(or_null(hi->owner));
    printf(",\"uuid\":");
    json_str(or_null(hi->uuid));
    printf(",\"id\":null,\"host\":");
    json_str(hi->host);
    putchar('}');
}

/* One disk of `who`: its state from the lockspace, its holders from the
 * helper where it knows them, else from the lease's holder record (another
 * host's, or a holder without the helper), else the pid the kernel knows
 * (POSIX locks).  A record is read only for a disk held exclusively, and
 * not when a POSIX lock holds it (virtlockd writes no record: one there is
 * an earlier holder's). */
static int
who_one(const struct opts *o, const lockd_space *space, lockd_conn *conn,
        const struct disk *d, struct table *t)
{
    static char host[256];
    struct who_ctx c = {.o = o, .t = t, .disk = d->name, .host = host};
    lockd_holder_info hi;
    int32_t pid = 0;
    char spid[16];
    int state = probe_disk(space, d, &pid), r = 0, rec;

    if (!host[0] && gethostname(host, sizeof(host) - 1) < 0)
        host[0] = '\0';
    if (state < 0) {
        /* Still one object, so that the document stays JSON. */
        if (o->json) {
            printf("{\"disk\":");
            json_str(d->name);
            printf(",\"key\":");
            json_str(d->key);
            printf(",\"state\":\"error\",\"error\":");
            json_str(lease_reason(state));
            printf(",\"holders\":[],\"record\":null}");
        }
        errorf("%s: %s", d->name, lease_reason(state));
        return EXIT_FAIL;
    }
    c.state = mode_word(state);
    if (o->json) {
        printf("{\"disk\":");
        json_str(d->name);
        printf(",\"key\":");
        json_str(d->key);
        printf(",\"state\":\"%s\",\"holders\":[", c.state);
    }
    /* Asked about a free disk too: a lease it keeps whose lock is gone
     * shows as LOST. */
    if (conn && space)
        r = lockd_conn_bind(conn, space);
    if (conn && r == 0)
        r = lockd_conn_list(conn, 0, d->list_key, who_row, &c);
    if (r < 0)
        helper_error(o->socket, r);
    rec = state == LOCKD_EXCLUSIVE && pid <= 0 && space &&
          lockd_holder(space, d->key, &hi) == 0;
    if (c.count == 0 && (rec || pid > 0) && o->json)
        holder_json(rec ? &hi : NULL, pid, c.rows > 0);
    else if (c.count == 0 && rec) {
        snprintf(spid, sizeof(spid), "%d", (int)hi.pid);
        table_add(t, d->name, c.state, spid, hi.owner, hi.uuid, hi.host);
    } else if (c.count == 0 && !o->json) {
        snprintf(spid, sizeof(spid), "%d", (int)pid);
        table_add(t, d->name, c.state, pid > 0 ? spid : "", "", "", pid > 0 ? host : "");
    }
    if (o->json) {
        printf("],\"record\":");
        if (rec)
            record_json(&hi);
        else
            printf("null");
        putchar('}');
    }
    return r < 0 ? helper_status(r) : 0;
}

static int
cmd_who(const struct opts *o, int argc, char **argv)
{
    struct table t = {.ncols = 6};
    lockd_space *space = NULL;
    lockd_conn *conn = NULL;
    struct disk *d = NULL;
    int i, r, worst = 0;

    if (argc == 0)
        return usage_error("who: no disk given");
    r = o->direct ? 0 : space_open(o, LOCKD_OPEN_READONLY, &space);
    if (r != 0)
        return r;
    if (space && !o->test)
        note_unrecorded(o, space);
    r = disks_parse(o, space, argc, argv, &d);
    if (r != 0)
        goto out;
    if (o->test) {
        /* flock(1)'s answer for scripts: 0 when every disk is free, the
         * conflict status (75) when one is held; nothing printed. */
        for (i = 0; i < argc; i++) {
            int32_t pid;
            int state = probe_disk(space, &d[i], &pid);

            if (state < 0) {
                errorf("%s: %s", d[i].name, lease_reason(state));
                worst = EXIT_FAIL;
            } else if (state != LOCKD_FREE && !worst)
                worst = o->conflict_code;
        }
        r = worst;
        goto out;
    }
    /* The helper only adds names to what the lockspace says; one that does
     * not answer is reported, and the states are still true. */
    if (socket_present(o->socket) && (r = lockd_conn_open(o->socket, &conn)) < 0) {
        helper_error(o->socket, r);
        errorf("note: holders are not named");
        worst = helper_status(r);
    }
    table_add(&t, "DISK", "STATE", "PID", "NAME", "UUID", "HOST");
    if (o->json)
        printf("{\"disks\":[");
    for (i = 0; i < argc; i++) {
        if (o->json && i)
            putchar(',');
        r = who_one(o, space, conn, &d[i], &t);
        worst = worst ? worst : r;
    }
    if (o->json) {
        printf("]}\n");
        json_complete(); /* its errors are in it, per disk */
    } else
        table_print(&t);
    r = worst;
out:
    table_free(&t);
    lockd_conn_close(conn);
    disks_free(d, (size_t)argc);
    lockd_space_close(space);
    return r;
}

/* ------------------------------------------------------------------------
 * gc
 */

/* n with a comma every three digits, into buf (at least 32 bytes). */
static const char *
thousands(uint64_t n, char *buf)
{
    char digits[24];
    int len = snprintf(digits, sizeof(digits), "%" PRIu64, n), i, o = 0;

    for (i = 0; i < len; i++) {
        if (i > 0 && (len - i) % 3 == 0)
            buf[o++] = ',';
        buf[o++] = digits[i];
    }
    buf[o] = '\0';
    return buf;
}

/* gc's progress line: "gc: 41,000/100,000 files, 52,000/s".  done may pass
 * total when lease files are created meanwhile: the total follows it. */
static void
gc_progress_format(char *buf, size_t size, uint64_t done, uint64_t total, double secs)
{
    char d[32], t[32], r[32];
    uint64_t rate = secs > 0 ? (uint64_t)((double)done / secs) : 0;

    snprintf(buf, size, "gc: %s/%s files, %s/s", thousands(done, d),
             thousands(total > done ? total : done, t), thousands(rate, r));
}

static int
gc_progress(uint64_t done, uint64_t total, void *userdata)
{
    const struct timespec *start = userdata;
    struct timespec now;
    char line[128];

    clock_gettime(CLOCK_MONOTONIC, &now);
    gc_progress_format(line, sizeof(line), done, total,
                       (double)(now.tv_sec - start->tv_sec) +
                           (double)(now.tv_nsec - start->tv_nsec) / 1e9);
    fprintf(stderr, "\r%s\033[K", line);
    return 0;
}

static void
gc_summary(const struct opts *o, uint64_t removed, uint64_t held, uint64_t young,
           uint64_t other)
{
    if (o->json) {
        printf("{\"removed\":%" PRIu64 ",\"kept\":%" PRIu64 ",\"held\":%" PRIu64
               ",\"young\":%" PRIu64 ",\"other\":%" PRIu64 "}\n",
               removed, held + young + other, held, young, other);
        return;
    }
    printf("gc: removed %" PRIu64 " unused lease file%s, kept %" PRIu64 " held", removed,
           removed == 1 ? "" : "s", held);
    if (young)
        printf(", %" PRIu64 " younger than %g s", young, o->min_age_ms / 1000.0);
    if (other)
        printf(", %" PRIu64 " not lease file%s (planted or unreadable)", other,
               other == 1 ? "" : "s");
    putchar('\n');
}

static int
cmd_gc(const struct opts *o, int argc, char **argv)
{
    uint64_t removed = 0, held = 0, young = 0, other = 0;
    lockd_space *space = NULL;
    int tty = isatty(STDERR_FILENO), r;
    struct timespec start;

    (void)argv;
    if (argc > 0)
        return usage_error("gc: takes no arguments");
    r = space_open(o, 0, &space);
    if (r != 0)
        return r;
    clock_gettime(CLOCK_MONOTONIC, &start);
    r = lockd_gc_ex(space, o->min_age_ms, tty ? gc_progress : NULL, &start, &removed,
                    &held, &young, &other);
    if (tty)
        fputs("\r\033[K", stderr);
    lockd_space_close(space);
    if (r < 0) {
        errorf("gc of lockspace %s: %s", o->dir, lease_reason(r));
        return EXIT_FAIL;
    }
    gc_summary(o, removed, held, young, other);
    return 0;
}

/* ------------------------------------------------------------------------
 * The command line
 */

static void
print_help(void)
{
    fputs(
        "Usage:\n"
        " lockdctl [options] key [--resource] NAME...\n"
        " lockdctl [options] run [--direct] [--shared] [--wait[=SEC]] [-E N] [--name N]\n"
        "                        [--uuid U] [--on-loss=ACTION] [--create-ok]\n"
        "                        DISK... -- CMD [ARG...]\n"
        " lockdctl [options] acquire --pid PID [--direct] [--shared] [--wait[=SEC]]\n"
        "                            [--name N] [--uuid U] [--on-loss=ACTION]\n"
        "                            [--create-ok] DISK...\n"
        " lockdctl [options] release --pid PID [DISK...]\n"
        " lockdctl [options] status\n"
        " lockdctl [options] who [--direct] [--test [-E N]] DISK...\n"
        " lockdctl [options] list [--held|--free]\n"
        " lockdctl [options] gc [--min-age=SEC]\n"
        " lockdctl [options] doctor [--direct DISK...]\n"
        " lockdctl [options] stop-helper [--force]\n"
        "\n"
        "Keep two virtual machines off one disk: leases in a lockspace directory,\n"
        "held as OFD locks, handed to lockd-helper(8) to outlive their manager.\n"
        "\n"
        "Commands:\n"
        " key          print the lease key of each disk (or resource string)\n"
        " run          hold the leases while CMD runs; exits with CMD's status\n"
        " acquire      take leases for a running process and hand them to the helper\n"
        " release      release some or all leases the helper holds for a process\n"
        " status       list the leases the helper holds\n"
        " who          free, shared or exclusive, and who holds it, for each disk\n"
        " list         every lease file in the lockspace: its state, disk and holder\n"
        " gc           delete lease files that nobody holds\n"
        " doctor       check the lockspace and the helper; explain what is wrong\n"
        " stop-helper  stop the helper on purpose (root; --force if guests hold leases)\n"
        "\n"
        "Options:\n"
        " -d, --dir DIR              lockspace directory (default: $LOCKD_DIR, or\n"
        "                              /var/lib/lockd/files for root)\n"
        " -k, --key-mode MODE        verbatim or canonical (paths), lvm or scsi (block\n"
        "                              devices by LV UUID or SCSI id, as virtlockd);\n"
        "                              must match the lockspace's\n"
        " -S, --socket PATH          helper socket (default: $LOCKD_SOCKET, or\n"
        "                              /run/lockd/helper.sock for root)\n"
        " -J, --json                 print JSON (key, status, who, list, gc, doctor,\n"
        "                              acquire); on failure, an error object\n"
        " -r, --resource             NAMEs are resource strings, not paths\n"
        " -s, --shared               take shared leases (default: exclusive)\n"
        " -x, --exclusive            take exclusive leases\n"
        " -w, --wait[=SEC]           wait until free (for SEC seconds at most);\n"
        "                              default: fail at once if busy\n"
        "     --create-ok            run, acquire: take a disk that does not exist yet\n"
        "     --test                 who: print nothing; exit 0 if all free, 75 if held\n"
        " -E, --conflict-exit-code N exit status when busy (default 75)\n"
        " -p, --pid PID              the process the leases protect\n"
        " -n, --name NAME            owner name shown by status and who\n"
        " -u, --uuid UUID            owner UUID (a guest's) shown by status and who\n"
        "     --on-loss=ACTION       if a lease is lost (its filesystem lost the lock):\n"
        "                              kill (default), stop, report, exec:CMD, or\n"
        "                              exec-or-kill:CMD (kill unless CMD exits 0)\n"
        "     --direct               run, acquire, who, doctor: no lockspace; the lock\n"
        "                              is on each disk itself (byte 0 of the image or\n"
        "                              block device, as virtlockd without a lockspace)\n"
        "     --min-age=SEC          gc: keep lease files made or changed less than\n"
        "                              SEC seconds ago (default 5; 0 judges all now)\n"
        " -f, --force                stop-helper: even though guests lose their leases\n"
        "     --held, --free         list: only the held, or only the free, lease files\n"
        " -h, --help                 display this help\n"
        " -V, --version              display version\n"
        "\n"
        "Exit status: 0 done; 75 busy (or the wait ran out); 69 helper unreachable;\n"
        "64 usage error; 1 any other failure. run exits with CMD's status.\n"
        "\n"
        "For more details see lockdctl(1).\n",
        stdout);
}

enum {
    OPT_GLOBAL = 1u << 0,
    OPT_RESOURCE = 1u << 1,
    OPT_LEASE = 1u << 2,    /* --shared, --exclusive, --wait, --name, --uuid, --on-loss */
    OPT_CONFLICT = 1u << 3, /* --conflict-exit-code */
    OPT_PID = 1u << 4,
    OPT_FORCE = 1u << 5,  /* --force */
    OPT_DIRECT = 1u << 6, /* --direct */
    OPT_JSON = 1u << 7,   /* --json: not a class getopt sees, a check after it */
    OPT_CREATE = 1u << 8, /* --create-ok */
    OPT_TEST = 1u << 9,   /* --test */
    OPT_GC = 1u << 10,    /* --min-age */
    OPT_LIST = 1u << 11,  /* --held, --free */
};

static const struct option long_options[] = {
    {"dir", required_argument, NULL, 'd'},
    {"key-mode", required_argument, NULL, 'k'},
    {"socket", required_argument, NULL, 'S'},
    {"json", no_argument, NULL, 'J'},
    {"help", no_argument, NULL, 'h'},
    {"version", no_argument, NULL, 'V'},
    {"resource", no_argument, NULL, 'r'},
    {"shared", no_argument, NULL, 's'},
    {"exclusive", no_argument, NULL, 'x'},
    {"wait", optional_argument, NULL, 'W'},
    {"conflict-exit-code", required_argument, NULL, 'E'},
    {"pid", required_argument, NULL, 'p'},
    {"name", required_argument, NULL, 'n'},
    {"uuid", required_argument, NULL, 'u'},
    {"force", no_argument, NULL, 'f'},
    {"on-loss", required_argument, NULL, 'L'},
    {"direct", no_argument, NULL, 'D'},
    {"create-ok", no_argument, NULL, 'c'},
    {"test", no_argument, NULL, 't'},
    {"min-age", required_argument, NULL, 'M'},
    {"held", no_argument, NULL, 'H'},
    {"free", no_argument, NULL, 'F'},
    {NULL, 0, NULL, 0},
};

/* "--name" for the option whose getopt value is c. */
static const char *
option_name(int c)
{
    static char buf[64];
    size_t i;

    for (i = 0; long_options[i].name; i++)
        if (long_options[i].val == c) {
            snprintf(buf, sizeof(buf), "--%s", long_options[i].name);
            return buf;
        }
    return c == 'w' ? "--wait" : "?";
}

static unsigned
option_class(int c)
{
    switch (c) {
    case 'r':
        return OPT_RESOURCE;
    case 's':
    case 'x':
    case 'w':
    case 'W':
    case 'n':
    case 'u':
    case 'L':
        return OPT_LEASE;
    case 'E':
        return OPT_CONFLICT;
    case 'p':
        return OPT_PID;
    case 'f':
        return OPT_FORCE;
    case 'D':
        return OPT_DIRECT;
    case 'c':
        return OPT_CREATE;
    case 't':
        return OPT_TEST;
    case 'M':
        return OPT_GC;
    case 'H':
    case 'F':
        return OPT_LIST;
    default:
        return OPT_GLOBAL;
    }
}

/* ------------------------------------------------------------------------
 * stop-helper
 */

/*
 * Stop the helper on purpose.  It holds the leases of running guests, which
 * lose their protection when it stops: say how many, and do it only when
 * there are none or --force says so.
 */
static int
cmd_stop_helper(const struct opts *o, int argc, char **argv)
{
    uint64_t owners = 0, leases = 0;
    lockd_conn *conn = NULL;
    int r;

    (void)argv;
    if (argc > 0)
        return usage_error("stop-helper: takes no arguments");
    r = conn_open(o, &conn);
    if (r != 0)
        return r;
    r = lockd_conn_status(conn, &owners, &leases, NULL);
    if (r == 0)
        r = lockd_conn_stop(conn, o->force);
    lockd_conn_close(conn);
    if (r == -EBUSY) {
        errorf("the helper holds %" PRIu64 " lease%s of %" PRIu64 " guest%s: stopping it "
               "leaves them unprotected; give --force to stop it all the same",
               leases, leases == 1 ? "" : "s", owners, owners == 1 ? "" : "s");
        return EXIT_BUSY;
    }
    if (r == -EPERM) {
        errorf("only root may stop the helper");
        return EXIT_FAIL;
    }
    if (r < 0) {
        helper_error(o->socket, r);
        return helper_status(r);
    }
    printf("lockd-helper stopped: %" PRIu64 " lease%s of %" PRIu64
           " guest%s released, those guests now run unprotected\n",
           leases, leases == 1 ? "" : "s", owners, owners == 1 ? "" : "s");
    return 0;
}

struct command {
    const char *name;
    int (*fn)(const struct opts *o, int argc, char **argv);
    unsigned allowed;
    int has_cmd; /* operands end with "-- CMD [ARG...]": options stop there */
};

static const struct command commands[] = {
    {"key", cmd_key, OPT_RESOURCE | OPT_JSON, 0},
    {"run", cmd_run_args,
     OPT_RESOURCE | OPT_LEASE | OPT_CONFLICT | OPT_DIRECT | OPT_CREATE, 1},
    {"acquire", cmd_acquire,
     OPT_RESOURCE | OPT_LEASE | OPT_PID | OPT_CONFLICT | OPT_DIRECT | OPT_JSON |
         OPT_CREATE,
     0},
    {"release", cmd_release, OPT_RESOURCE | OPT_PID, 0},
    {"status", cmd_status, OPT_JSON, 0},
    {"who", cmd_who, OPT_RESOURCE | OPT_DIRECT | OPT_JSON | OPT_TEST | OPT_CONFLICT, 0},
    {"list", cmd_list, OPT_LIST | OPT_JSON, 0},
    {"gc", cmd_gc, OPT_GC | OPT_JSON, 0},
    {"doctor", cmd_doctor, OPT_DIRECT | OPT_JSON, 0},
    {"stop-helper", cmd_stop_helper, OPT_FORCE, 0},
    {NULL, NULL, 0, 0},
};

/* Seconds, with a fraction, as ms: 0.0001 is 1 ms, not 0.  -EINVAL for
 * anything but digits and a point, or more than INT_MAX ms. */
static int
parse_seconds(const char *s, int *ret_ms)
{
    char *end;
    double v;

    errno = 0;
    v = strtod(s, &end);
    if (!*s || strspn(s, "0123456789.") != strlen(s) || *end || errno ||
        v > INT_MAX / 1000)
        return -EINVAL;
    *ret_ms = (int)(v * 1000.0);
    if (v > 0 && *ret_ms == 0)
        *ret_ms = 1;
    return 0;
}

static int
parse_wait(const char *s, struct opts *o)
{
    o->wait_text = (char *)(s ? s : "");
    if (!s) {
        o->wait_ms = LOCKD_FOREVER;
        return 0;
    }
    return parse_seconds(s, &o->wait_ms);
}

static int
parse_int(const char *s, long min, long max, long *ret)
{
    char *end;
    long v;

    errno = 0;
    v = strtol(s, &end, 10);
    if (!*s || *end || errno || v < min || v > max || isspace((unsigned char)*s))
        return -EINVAL;
    *ret = v;
    return 0;
}

static int
uuid_valid(const char *u)
{
    size_t i;

    if (strlen(u) != 36)
        return 0;
    for (i = 0; i < 36; i++)
        if (i == 8 || i == 13 || i == 18 || i == 23 ? u[i] != '-'
                                                    : !isxdigit((unsigned char)u[i]))
            return 0;
    return 1;
}

/* Apply one option; a usage error's exit status, or 0. */
static int
apply_option(struct opts *o, int c, const char *arg)
{
    long v;

    switch (c) {
    case 'd':
        free(o->dir);
        o->dir = NULL;
        if (!*arg)
            return usage_error("--dir: empty path");
        if (disk_path(arg, &o->dir) < 0)
            return usage_error("--dir %s: cannot resolve", arg);
        o->dir_given = 1;
        return 0;
    case 'k':
        if (strcmp(arg, "verbatim") == 0)
            o->mode_flag = LOCKD_OPEN_VERBATIM;
        else if (strcmp(arg, "canonical") == 0)
            o->mode_flag = LOCKD_OPEN_CANONICAL;
        else if (strcmp(arg, "lvm") == 0)
            o->mode_flag = LOCKD_OPEN_LVM;
        else if (strcmp(arg, "scsi") == 0)
            o->mode_flag = LOCKD_OPEN_SCSI;
        else
            return usage_error("--key-mode %s: must be verbatim, canonical, lvm or scsi",
                               arg);
        return 0;
    case 'S':
        if (!*arg)
            return usage_error("--socket: empty path");
        free(o->socket);
        o->socket = strdup(arg);
        if (!o->socket) {
            /* Never "no helper": run would go on without the one asked for. */
            errorf("%s", strerror(ENOMEM));
            return EXIT_FAIL;
        }
        return 0;
    case 'J':
        o->json = 1;
        return 0;
    case 'M': {
        int ms;

        if (parse_seconds(arg, &ms) < 0)
            return usage_error("--min-age=%s: not a number of seconds", arg);
        o->min_age_ms = (uint32_t)ms;
        return 0;
    }
    case 'r':
        o->resource = 1;
        return 0;
    case 's':
    case 'x':
        o->shared = c == 's';
        return 0;
    case 'w':
    case 'W':
        if (parse_wait(arg, o) < 0)
            return usage_error(c == 'w' ? "-w %s: not a number of seconds"
                                        : "--wait=%s: not a number of seconds",
                               arg);
        return 0;
    case 'E':
        if (parse_int(arg, 0, 255, &v) < 0)
            return usage_error("--conflict-exit-code %s: not an exit status (0-255)",
                               arg);
        o->conflict_code = (int)v;
        return 0;
    case 'p':
        if (parse_int(arg, 1, INT32_MAX, &v) < 0)
            return usage_error("--pid %s: not a process id", arg);
        /* Last-wins would hand a guest's leases to the wrong process. */
        if (o->pid && o->pid != (int32_t)v)
            return usage_error("--pid given twice (%d and %s): the leases have one owner",
                               (int)o->pid, arg);
        o->pid = (int32_t)v;
        return 0;
    case 'n':
        if (strlen(arg) > LOCKD_OWNER_NAME_MAX)
            return usage_error("--name: longer than %d bytes", LOCKD_OWNER_NAME_MAX);
        o->name = arg;
        return 0;
    case 'u':
        if (!uuid_valid(arg))
            return usage_error("--uuid %s: not a UUID (8-4-4-4-12 hex digits)", arg);
        o->uuid = arg;
        return 0;
    case 'f':
        o->force = 1;
        return 0;
    case 'D':
        o->direct = 1;
        return 0;
    case 'c':
        o->create_ok = 1;
        return 0;
    case 't':
        o->test = 1;
        return 0;
    case 'H':
    case 'F':
        if (o->list_filter && o->list_filter != (c == 'H' ? LIST_HELD : LIST_FREE))
            return usage_error("--held and --free exclude each other");
        o->list_filter = c == 'H' ? LIST_HELD : LIST_FREE;
        return 0;
    case 'L':
        o->on_loss_cmd = NULL;
        if (strcmp(arg, "kill") == 0)
            o->on_loss = LOCKD_ON_LOSS_KILL;
        else if (strcmp(arg, "stop") == 0)
            o->on_loss = LOCKD_ON_LOSS_STOP;
        else if (strcmp(arg, "report") == 0)
            o->on_loss = LOCKD_ON_LOSS_REPORT;
        else if (strncmp(arg, "exec:", 5) == 0 && arg[5] && strlen(arg + 5) <= LOCKD_COMMAND_MAX) {
            o->on_loss = LOCKD_ON_LOSS_EXEC;
            o->on_loss_cmd = arg + 5;
        } else if (strncmp(arg, "exec-or-kill:", 13) == 0 && arg[13] &&
                   strlen(arg + 13) <= LOCKD_COMMAND_MAX) {
            o->on_loss = LOCKD_ON_LOSS_EXEC_OR_KILL;
            o->on_loss_cmd = arg + 13;
        } else
            return usage_error(
                "--on-loss=%s: must be kill, stop, report, exec:COMMAND or "
                "exec-or-kill:COMMAND",
                arg);
        return 0;
    }
    return EXIT_USAGE;
}

/*
 * Parse the options of argv (argv[0] names the command, or the program),
 * allowing only the classes in allowed.  Returns 0 with optind at the first
 * operand, -1 when --help or --version was handled, or a usage exit status.
 */
static int
parse_options(struct opts *o, int argc, char **argv, unsigned allowed, const char *cmd,
              int permute)
{
    int c, r;

    optind = 0;
    opterr = 0;
    while (
        (c = getopt_long(argc, argv,
                         permute ? ":d:k:S:JhVrsxw:E:p:n:u:f" : "+:d:k:S:JhVrsxw:E:p:n:u:f",
                         long_options, NULL)) != -1) {
        if (c == '?' || c == ':') {
            const char *what = argv[optind - 1];
            char shortopt[3] = {'-', (char)optopt, '\0'};

            if (optopt && !(what[0] == '-' && what[1] == '-'))
                what = shortopt;
            return usage_error(
                c == ':' ? "option %s requires an argument" : "unknown option %s", what);
        }
        if (c == 'h') {
            print_help();
            return -1;
        }
        if (c == 'V') {
            printf("lockdctl from lockd %s (library %s)\n", LOCKD_VERSION_STRING,
                   lockd_version());
            return -1;
        }
        if (!(option_class(c) & (allowed | OPT_GLOBAL)))
            return usage_error("option %s does not apply to %s", option_name(c),
                               cmd ? cmd : "lockdctl itself; put it after the command");
        r = apply_option(o, c, optarg);
        if (r != 0)
            return r;
    }
    return 0;
}

/*
 * --json: stdout goes to a memfd while the command runs, so that a command
 * that fails before printing its document prints a JSON error object
 * instead of nothing (json_end()): a script reading stdout always gets one
 * JSON value.  Returns the saved stdout, or -1 (then output goes straight
 * out, as without --json).
 */
static int
json_begin(void)
{
    int m = memfd_create("lockdctl-json", MFD_CLOEXEC), saved;

    if (m < 0)
        return -1;
    fflush(stdout);
    saved = fcntl(STDOUT_FILENO, F_DUPFD_CLOEXEC, 3);
    if (saved < 0 || dup2(m, STDOUT_FILENO) < 0) {
        if (saved >= 0)
            close(saved);
        close(m);
        return -1;
    }
    close(m);
    return saved;
}

static int json_error_printed, json_asked, json_whole;

/* The command has printed its whole document, which says what failed (who
 * with a disk it could not probe, doctor with a warning): json_end() keeps
 * it whatever the exit status. */
void
json_complete(void)
{
    json_whole = 1;
}

/* {"error":{"message":"...","exit":N}} on stdout, once. */
static void
json_error(int r)
{
    if (json_error_printed || r == 0)
        return;
    fputs("{\"error\":{\"message\":", stdout);
    json_str(last_error[0] ? last_error : "failed");
    printf(",\"exit\":%d}}\n", r);
    json_error_printed = 1;
}

/* Undo json_begin(): what the command printed if it succeeded or printed a
 * whole document (json_complete()), else the error object. */
static void
json_end(int saved, int r)
{
    char buf[65536];
    ssize_t n;
    off_t size = 0;
    int m;

    fflush(stdout);
    m = fcntl(STDOUT_FILENO, F_DUPFD_CLOEXEC, 3); /* the memfd */
    dup2(saved, STDOUT_FILENO);
    close(saved);
    clearerr(stdout);
    if (m >= 0)
        size = lseek(m, 0, SEEK_CUR);
    /* A failure leaves what was printed, which may be half a document: the
     * error object replaces it, unless the document is whole. */
    if (size > 0 && (r == 0 || json_whole) && lseek(m, 0, SEEK_SET) == 0) {
        while ((n = read(m, buf, sizeof(buf))) > 0)
            fwrite(buf, 1, (size_t)n, stdout);
        json_error_printed = 1; /* the command's own document says it */
    } else
        json_error(r);
    if (m >= 0)
        close(m);
}

static int
dispatch(struct opts *o, int argc, char **argv)
{
    const struct command *cmd;
    int r, dd = argc;

    if (argc == 0)
        return usage_error("no command given");
    for (cmd = commands; cmd->name && strcmp(cmd->name, argv[0]) != 0; cmd++)
        ;
    if (!cmd->name)
        return usage_error("unknown command '%s'", argv[0]);
    if (cmd->has_cmd)
        for (dd = 1; dd < argc && strcmp(argv[dd], "--") != 0; dd++)
            ;
    r = parse_options(o, dd, argv, cmd->allowed, cmd->name, 1);
    if (r != 0)
        return r < 0 ? 0 : r;
    if (o->direct && o->resource)
        return usage_error(
            "--direct locks disks themselves: it takes no --resource names");
    /* Operands now sit in argv[optind..dd), permuted there by getopt. */
    if (o->json && !(cmd->allowed & OPT_JSON))
        return usage_error("option --json does not apply to %s", cmd->name);
    if (o->json && o->test)
        return usage_error("who --test prints nothing: it takes no --json");
    r = names_check(dd - optind, argv + optind);
    if (r != 0)
        return r;
    if (o->json) {
        int saved = json_begin();

        r = cmd->fn(o, argc - optind, argv + optind);
        if (saved >= 0)
            json_end(saved, r);
        else
            json_error_printed = 1; /* printed straight out: nothing to add */
        return r;
    }
    return cmd->fn(o, argc - optind, argv + optind);
}

/* Whether word is an option whose argument is the next word ("-n NAME",
 * "--name NAME"; not "--name=NAME"). */
static int
takes_next(const char *word)
{
    size_t i;

    if (word[0] != '-')
        return 0;
    if (word[1] != '-')
        return word[1] && !word[2] && strchr("dkSEpnu", word[1]);
    for (i = 0; long_options[i].name; i++)
        if (long_options[i].has_arg == required_argument &&
            strcmp(word + 2, long_options[i].name) == 0)
            return 1;
    return 0;
}

/*
 * Before getopt: "-w DISK" means "wait, for as long as it takes" (--wait
 * without a number), not "wait DISK seconds": getopt cannot have an optional
 * argument in a word of its own, so a -w whose next word is not a number of
 * seconds is read as --wait.  And whether --json was asked for at all, so
 * that a usage error getopt meets before it still answers in JSON.  Options
 * end at "--" (run's command is its own); an option's argument is skipped
 * ("--name -w" names an owner "-w").
 */
static void
argv_prescan(int argc, char **argv)
{
    int i;

    for (i = 1; i < argc && strcmp(argv[i], "--") != 0; i++) {
        const char *next = i + 1 < argc ? argv[i + 1] : "";

        if (strcmp(argv[i], "-J") == 0 || strcmp(argv[i], "--json") == 0)
            json_asked = 1;
        else if (strcmp(argv[i], "-w") == 0 &&
                 (!*next || strspn(next, "0123456789.") != strlen(next)))
            argv[i] = (char *)"--wait";
        else if (takes_next(argv[i]))
            i++;
    }
}

int
main(int argc, char **argv)
{
    struct opts o = {.wait_ms = LOCKD_TRY,
                     .conflict_code = EXIT_BUSY,
                     .on_loss = -1,
                     .min_age_ms = LOCKD_GC_MIN_AGE_MS};
    int r;

    argv_prescan(argc, argv);
    o.dir_given = getenv("LOCKD_DIR") && *getenv("LOCKD_DIR");
    r = parse_options(&o, argc, argv, 0, NULL, 0);
    if (r > 0 && (o.json || json_asked))
        json_error(r);
    if (r != 0) {
        free(o.dir);
        free(o.socket);
        return r < 0 ? 0 : r;
    }
    if (!o.dir)
        r = default_path(lockd_default_dir, "LOCKD_DIR", &o.dir);
    if (r == 0 && !o.socket)
        r = default_path(lockd_default_socket, "LOCKD_SOCKET", &o.socket);
    if (r != 0) {
        free(o.dir);
        free(o.socket);
        return r;
    }
    r = dispatch(&o, argc - optind, argv + optind);
    if (o.json || json_asked)
        json_error(r);
    free(o.dir);
    free(o.socket);
    fflush(stdout);
    if (ferror(stdout)) {
        errorf("write error on standard output");
        return r ? r : EXIT_FAIL;
    }
    return r;
}
