/* SPDX-License-Identifier: MIT */
/*
 * lockdctl-doctor.c: `lockdctl doctor`, which checks a lockspace and the
 * helper and says what is wrong, in words an admin can act on.
 *
 * The checks, in order: the directory, who may write to it and who owns what
 * lockd trusts there; the settings file and key mode; the filesystem type (an
 * overlay's locks miss the directory beneath it), and the NFS and CIFS mount
 * options that make locks local to one host (read from /proc/self/mountinfo);
 * whether OFD locks work there;
 * whether the helper answers; the fd limits; and the lease files, held, unused
 * or planted.  It changes nothing.  The rest of lockdctl is in lockdctl.c;
 * what the two share is in lockdctl.h.  See lockdctl(1).
 */
#define _GNU_SOURCE
#include "lockd.h"
#include "lockdctl.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

enum { DOC_OK, DOC_NOTE, DOC_WARNING, DOC_ERROR };

struct doctor {
    const struct opts *o;
    int worst;
    int count;
    int warnings, errors;
    int fs_network; /* the lockspace is on a filesystem other hosts see */
};

static int on_nfs(const char *dir);

static void doc_say(struct doctor *doc, int level, const char *check, const char *fmt,
                    ...) __attribute__((format(printf, 4, 5)));

static void
doc_say(struct doctor *doc, int level, const char *check, const char *fmt, ...)
{
    static const char *const words[] = {"ok", "note", "warning", "error"};
    char msg[2048];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    doc->worst = level > doc->worst ? level : doc->worst;
    doc->warnings += level == DOC_WARNING;
    doc->errors += level == DOC_ERROR;
    if (doc->o->json) {
        printf("%s{\"check\":\"%s\",\"level\":\"%s\",\"message\":", doc->count ? "," : "",
               check, words[level]);
        json_str(msg);
        putchar('}');
    } else {
        /* Paths and names here may come from other users (a file planted
         * in the lockspace): escaped, as everywhere in lockdctl. */
        printf("%-8s %-10s ", words[level], check);
        put_text(stdout, msg);
        putchar('\n');
    }
    doc->count++;
}

/*
 * A directory anyone may write to.  Without the sticky bit any user can
 * rename or remove a lease another process holds, and a second holder then
 * gets the disk.  With it (mode 1777, as /tmp) they cannot touch what is
 * there, but can still create a disk's key before its first lease: a
 * symlink or FIFO lockd refuses, or a file of their own they keep locked
 * (or that fs.protected_regular forbids root to open); that disk is blocked
 * either way.
 */
static void
doc_dir_mode(struct doctor *doc, const struct stat *st)
{
    const char *dir = doc->o->dir;

    doc_say(doc, DOC_WARNING, "directory",
            "%s is writable by everyone (mode %04o): any user can %splant a file or "
            "symlink at a disk's key and block that disk: chmod 0755 %s",
            dir, (unsigned)(st->st_mode & 07777),
            st->st_mode & S_ISVTX ? "" : "rename or remove a held lease, or ", dir);
}

/*
 * What lockd trusts in the directory must belong to the user who uses it
 * (or to root): its owner can undo the lock from outside.  NFS with
 * root_squash gives root's files to the overflow user (nobody), whom every
 * client's nobody then is.  Returns how many were owned by someone else.
 */
static int
doc_owners(struct doctor *doc, int nfs)
{
    static const struct {
        const char *name, *harm;
    } trusted[] = {
        {".", "rename or remove a held lease, and a second holder then gets the disk"},
        {SETTINGS_NAME, "change the key mode, and one disk then has two keys"},
        {".lockd-index", "keep its lock, and no new lease can be taken"},
    };
    const char *dir = doc->o->dir;
    uid_t me = geteuid();
    struct stat st;
    size_t i;
    int dfd = open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC), n = 0;

    for (i = 0; dfd >= 0 && i < sizeof(trusted) / sizeof(trusted[0]); i++) {
        if (fstatat(dfd, trusted[i].name, &st, AT_SYMLINK_NOFOLLOW) < 0 ||
            st.st_uid == me || st.st_uid == 0)
            continue;
        n++;
        if (me == 0)
            doc_say(doc, DOC_WARNING, "directory",
                    "%s%s%s is owned by uid %u, not root: that user can %s: chown "
                    "root:root %s%s%s%s",
                    dir, i ? "/" : "", i ? trusted[i].name : "", (unsigned)st.st_uid,
                    trusted[i].harm, dir, i ? "/" : "", i ? trusted[i].name : "",
                    nfs ? " (NFS root_squash does this: export the lockspace with "
                          "no_root_squash, or chown it on the server)"
                        : "");
        else
            doc_say(doc, DOC_WARNING, "directory",
                    "%s%s%s is owned by uid %u, neither you (uid %u) nor root: that "
                    "user can %s: use a lockspace of your own",
                    dir, i ? "/" : "", i ? trusted[i].name : "", (unsigned)st.st_uid,
                    (unsigned)me, trusted[i].harm);
    }
    if (dfd >= 0)
        close(dfd);
    return n;
}

/* The directory: there, a directory, writable, by whom.  Returns 0 if the
 * other checks can look inside it. */
static int
doc_directory(struct doctor *doc)
{
    const char *dir = doc->o->dir;
    struct stat st;
    int said = 0;

    if (stat(dir, &st) < 0) {
        if (errno == ENOENT)
            doc_say(
                doc, DOC_ERROR, "directory",
                "%s does not exist (lockdctl run or acquire creates it; doctor does not)",
                dir);
        else
            doc_say(doc, DOC_ERROR, "directory", "%s: %s", dir, strerror(errno));
        return -1;
    }
    if (!S_ISDIR(st.st_mode)) {
        doc_say(doc, DOC_ERROR, "directory", "%s is not a directory", dir);
        return -1;
    }
    if (faccessat(AT_FDCWD, dir, W_OK | X_OK, AT_EACCESS) < 0) {
        doc_say(doc, DOC_ERROR, "directory",
                errno == EROFS
                    ? "%s is on a read-only filesystem: no lease can be created or "
                      "taken exclusively"
                    : "%s is not writable for you: no lease can be created",
                dir);
        said = 1;
    }
    if (st.st_mode & S_IWOTH) {
        doc_dir_mode(doc, &st);
        said = 1;
    }
    if (doc_owners(doc, on_nfs(dir)) > 0)
        said = 1;
    if (!said)
        doc_say(doc, DOC_OK, "directory", "%s exists and is writable", dir);
    return 0;
}

/* The settings file and key mode.  Returns the read-only handle, or NULL. */
static lockd_space *
doc_settings(struct doctor *doc)
{
    const struct opts *o = doc->o;
    lockd_space *space = NULL, *other = NULL;
    int r = lockd_space_open(o->dir, LOCKD_OPEN_READONLY | o->mode_flag, &space);
    const char *mode;

    if (r == -EMEDIUMTYPE && lockd_space_open(o->dir, LOCKD_OPEN_READONLY, &other) == 0) {
        doc_say(doc, DOC_ERROR, "settings",
                "the lockspace records key mode %s, but --key-mode asked for %s",
                lockd_space_mode(other) == LOCKD_MODE_CANONICAL ? "canonical"
                                                                : "verbatim",
                o->mode_flag == LOCKD_OPEN_CANONICAL ? "canonical" : "verbatim");
        lockd_space_close(other);
        return NULL;
    }
    if (r == -EPROTO) {
        doc_say(
            doc, DOC_ERROR, "settings",
            "%s/%s is not a settings file this lockdctl understands (newer, or damaged)",
            o->dir, SETTINGS_NAME);
        return NULL;
    }
    if (r < 0) {
        doc_say(doc, DOC_ERROR, "settings", "cannot open the lockspace: %s",
                strerror(-r));
        return NULL;
    }
    mode = lockd_space_mode(space) == LOCKD_MODE_CANONICAL ? "canonical" : "verbatim";
    if (lockd_space_recorded(space))
        doc_say(doc, DOC_OK, "settings", "key mode %s, recorded in %s", mode,
                SETTINGS_NAME);
    else
        doc_say(doc, DOC_NOTE, "settings",
                "no %s yet: the first lease taken will record key mode %s", SETTINGS_NAME,
                mode);
    return space;
}

/* Undo mountinfo's octal escapes (\040 for a space) in place. */
static void
unescape(char *s)
{
    char *w = s;

    for (; *s; s++) {
        if (s[0] == '\\' && s[1] >= '0' && s[1] <= '3' && s[2] >= '0' && s[2] <= '7' &&
            s[3] >= '0' && s[3] <= '7') {
            *w++ = (char)((s[1] - '0') * 64 + (s[2] - '0') * 8 + (s[3] - '0'));
            s += 3;
        } else
            *w++ = *s;
    }
    *w = '\0';
}

/* Whether mount point mp contains path (component-wise), and how long it is. */
static size_t
mount_covers(const char *mp, const char *path)
{
    size_t n = strlen(mp);

    if (strcmp(mp, "/") == 0)
        return 1;
    if (strncmp(mp, path, n) == 0 && (path[n] == '/' || path[n] == '\0'))
        return n;
    return 0;
}

struct mount_info {
    char fstype[64];
    char source[512];
    char options[2048]; /* per-mount and superblock options, comma-joined */
};

/*
 * The mount that holds path, from /proc/self/mountinfo (or the test's fake
 * one): the last entry with the longest mount point containing path, as
 * findmnt --target picks it.  Returns 0, or -ENOENT if none matched.
 */
static int
mount_find(const char *path, struct mount_info *ret)
{
    const char *file = getenv("LOCKD_TEST_MOUNTINFO");
    char *line = NULL, *f[6], *sep, *save;
    size_t cap = 0, best = 0;
    FILE *fp = fopen(file && *file ? file : "/proc/self/mountinfo", "re");
    int i, found = -ENOENT;

    if (!fp)
        return -errno;
    while (getline(&line, &cap, fp) > 0) {
        size_t n;

        line[strcspn(line, "\n")] = '\0';
        sep = strstr(line, " - ");
        if (!sep)
            continue;
        *sep = '\0';
        memset(f, 0, sizeof(f));
        f[0] = strtok_r(line, " ", &save);
        for (i = 1; i < 6 && f[i - 1]; i++)
            f[i] = strtok_r(NULL, " ", &save);
        if (!f[0] || !f[5])
            continue;
        unescape(f[4]);
        n = mount_covers(f[4], path);
        if (n == 0 || n < best)
            continue;
        best = n;
        found = 0;
        snprintf(ret->options, sizeof(ret->options), "%s", f[5]);
        f[0] = strtok_r(sep + 3, " ", &save);
        f[1] = f[0] ? strtok_r(NULL, " ", &save) : NULL;
        f[2] = f[1] ? strtok_r(NULL, " ", &save) : NULL;
        snprintf(ret->fstype, sizeof(ret->fstype), "%s", f[0] ? f[0] : "?");
        snprintf(ret->source, sizeof(ret->source), "%s", f[1] ? f[1] : "?");
        if (f[2])
            snprintf(ret->options + strlen(ret->options),
                     sizeof(ret->options) - strlen(ret->options), ",%s", f[2]);
    }
    free(line);
    fclose(fp);
    return found;
}

/* Whether dir is on NFS, by the mount that holds it. */
static int
on_nfs(const char *dir)
{
    char real[PATH_MAX];
    struct mount_info m;

    return realpath(dir, real) && mount_find(real, &m) == 0 &&
           strncmp(m.fstype, "nfs", 3) == 0;
}

/* Whether the comma-separated list opts has option (or option=..., and then
 * its value is copied to val). */
static int
has_option(const char *opts, const char *option, char *val, size_t size)
{
    size_t n = strlen(option);
    const char *p = opts;

    while (p && *p) {
        if (strncmp(p, option, n) == 0 && (p[n] == ',' || p[n] == '\0' || p[n] == '=')) {
            if (val && p[n] == '=')
                snprintf(val, size, "%.*s", (int)strcspn(p + n + 1, ","), p + n + 1);
            return 1;
        }
        p = strchr(p, ',');
        p = p ? p + 1 : NULL;
    }
    return 0;
}

static int
fs_is_network(const char *t)
{
    static const char *const net[] = {"nfs",   "nfs4",   "cifs",      "smb3",
                                      "smbfs", "ceph",   "glusterfs", "fuse.glusterfs",
                                      "gfs2",  "ocfs2",  "lustre",    "9p",
                                      "afs",   "beegfs", "gpfs",      NULL};
    size_t i;

    for (i = 0; net[i]; i++)
        if (strcmp(t, net[i]) == 0)
            return 1;
    return 0;
}

/* The cluster stack OCFS2 runs on ("o2cb", "pcmk", ...), or "" if unknown.
 * LOCKD_TEST_OCFS2_STACK names another file to read (test-only). */
static void
ocfs2_stack(char *buf, size_t size)
{
    const char *path = getenv("LOCKD_TEST_OCFS2_STACK");
    FILE *f = fopen(path && *path ? path : "/sys/fs/ocfs2/cluster_stack", "re");

    buf[0] = '\0';
    if (!f)
        return;
    if (!fgets(buf, (int)size, f))
        buf[0] = '\0';
    buf[strcspn(buf, "\n")] = '\0';
    fclose(f);
}

/* Filesystem type, and the NFS, CIFS and OCFS2 settings that make locks
 * host-local; what a GlusterFS volume needs, which no client can see. */
static void
doc_filesystem(struct doctor *doc, const lockd_space *space)
{
    char real[PATH_MAX], val[64] = "", stack[32] = "";
    struct mount_info m;
    struct statfs sf;

    memset(&m, 0, sizeof(m));
    if (!realpath(doc->o->dir, real) || mount_find(real, &m) < 0) {
        if (fstatfs(lockd_space_fd(space), &sf) == 0)
            doc_say(doc, DOC_NOTE, "filesystem", "type 0x%lx (no mount entry found)",
                    (unsigned long)sf.f_type);
        return;
    }
    doc->fs_network = fs_is_network(m.fstype);
    if (strcmp(m.fstype, "ocfs2") == 0)
        ocfs2_stack(stack, sizeof(stack));
    /* An overlay's files are inodes of its own: an OFD lock taken through
     * it and one taken on the lower (or upper) directory's file, or through
     * another overlay of the same lower, do not conflict (fcntl(2) locks are
     * per inode). */
    if (strcmp(m.fstype, "overlay") == 0)
        doc_say(doc, DOC_ERROR, "filesystem",
                "overlay: the lockspace is reached through an overlay filesystem, whose "
                "locks do not conflict with locks on the directory beneath it, so one "
                "disk can be granted twice: put the lockspace on the lower/real "
                "filesystem, not through an overlay");
    else if (strncmp(m.fstype, "nfs", 3) == 0 &&
             (has_option(m.options, "nolock", NULL, 0) ||
              (has_option(m.options, "local_lock", val, sizeof(val)) &&
               (strcmp(val, "posix") == 0 || strcmp(val, "all") == 0))))
        doc_say(doc, DOC_WARNING, "filesystem",
                "%s from %s is mounted %s%s: LOCKS ARE LOCAL TO THIS HOST. Other hosts "
                "do not "
                "see its leases and can start a guest on a disk this host holds. Remount "
                "without nolock and with local_lock=none (the default)",
                m.fstype, m.source, *val ? "local_lock=" : "nolock", val);
    else if (strcmp(m.fstype, "cifs") == 0 && has_option(m.options, "nobrl", NULL, 0))
        doc_say(doc, DOC_WARNING, "filesystem",
                "cifs from %s is mounted nobrl: LOCKS ARE LOCAL TO THIS HOST. Remount "
                "without nobrl",
                m.source);
    else if (strcmp(m.fstype, "ocfs2") == 0 &&
             (has_option(m.options, "localflocks", NULL, 0) || strcmp(stack, "o2cb") == 0 ||
              !*stack))
        /* OCFS2 sends fcntl locks to other nodes only through a userspace
         * cluster stack's dlm (pcmk, cman); o2cb keeps them on the node. */
        doc_say(doc, DOC_WARNING, "filesystem",
                "ocfs2 from %s %s: LOCKS ARE LOCAL TO THIS HOST. Other hosts do not see "
                "its leases; use a userspace cluster stack (pcmk, with dlm), without "
                "localflocks",
                m.source,
                has_option(m.options, "localflocks", NULL, 0) ? "is mounted localflocks"
                : *stack ? "runs the o2cb cluster stack"
                       : "runs a cluster stack this host cannot name (no "
                         "/sys/fs/ocfs2/cluster_stack)");
    else if (doc->fs_network)
        doc_say(doc, DOC_OK, "filesystem",
                "%s from %s: locks go to the server, so every host mounting it sees them",
                m.fstype, m.source);
    else
        doc_say(doc, DOC_OK, "filesystem", "%s (local: leases protect this host only)",
                m.fstype);
    if (strcmp(m.fstype, "fuse.glusterfs") == 0 || strcmp(m.fstype, "glusterfs") == 0)
        doc_say(doc, DOC_NOTE, "filesystem",
                "GlusterFS volume %s: a client cannot see its options. A lockspace volume "
                "needs client.strict-locks on (else a reconnect silently drops locks) and "
                "performance.stat-prefetch off (else a host may lock a lease file another "
                "host removed), and client timeouts shorter than the server's "
                "(network.ping-timeout and client.tcp-user-timeout below "
                "server.tcp-user-timeout): no lock manager can stop a guest that lost its "
                "lock before another host is granted it otherwise. Check on a server: "
                "gluster volume get VOLUME all | grep -E 'strict-locks|stat-prefetch|timeout'",
                m.source);
    if (doc->fs_network && lockd_space_mode(space) == LOCKD_MODE_CANONICAL)
        doc_say(
            doc, DOC_WARNING, "settings",
            "key mode canonical on a network filesystem: realpath(3) follows this host's "
            "symlinks and mounts, so hosts may key one disk differently; use verbatim");
}

/* The test seam: LOCKD_TEST_LOCK_FAIL=ENOLCK makes the lock test's first
 * lock call fail with that errno (test-only; see lockdctl(1)). */
static int
lock_fail_injected(void)
{
    const char *name = getenv("LOCKD_TEST_LOCK_FAIL");
    int e;

    if (!name || !*name)
        return 0;
    for (e = 1; e < 4096; e++) {
        const char *n = strerrorname_np(e);

        if (n && strcmp(n, name) == 0)
            return e;
    }
    return EINVAL;
}

/*
 * Whether OFD locks work on the open files a and b (two descriptions of one
 * file): a takes a lock of type on byte 0, then b must see it conflict.
 * Returns 0, or -errno of the call that failed, or -ENOLCK if the lock was
 * granted but b saw nothing (a filesystem that accepts locks and ignores
 * them).
 */
static int
lock_pair(int a, int b, short type)
{
    struct flock fl = {.l_type = type, .l_whence = SEEK_SET, .l_start = 0, .l_len = 1};
    struct flock probe = {
        .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 1};
    int e = lock_fail_injected(), r;

    if (e)
        return -e;
    if (fcntl(a, F_OFD_SETLK, &fl) < 0)
        return -errno;
    r = fcntl(b, F_OFD_GETLK, &probe) < 0 ? -errno : probe.l_type == type ? 0 : -ENOLCK;
    fl.l_type = F_UNLCK;
    (void)fcntl(a, F_OFD_SETLK, &fl);
    return r;
}

/*
 * Two descriptions of a scratch file in the lockspace: an O_TMPFILE (which
 * has no name, so nothing is left behind whatever happens), or where the
 * filesystem has none (NFS), a ".lockd-doctor.*" file removed right after
 * (never a key, so nothing mistakes it for a lease).  For a lockspace that
 * cannot be written, the settings file, locked for reading only.
 * Returns 0 and both fds, or -errno; *ret_name is set if a file was created.
 */
static int
lock_files(int dirfd, int writable, char *name, size_t size, int *ret_a, int *ret_b)
{
    char path[64];
    int a, b, fl = O_CLOEXEC | O_NOFOLLOW | O_NOCTTY | O_NONBLOCK;

    name[0] = '\0';
    if (!writable) {
        a = openat(dirfd, SETTINGS_NAME, O_RDONLY | fl);
        b = a < 0 ? -1 : openat(dirfd, SETTINGS_NAME, O_RDONLY | fl);
    } else if ((a = openat(dirfd, ".", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600)) >= 0) {
        snprintf(path, sizeof(path), "/proc/self/fd/%d", a);
        b = open(path, O_RDWR | O_CLOEXEC);
    } else {
        snprintf(name, size, ".lockd-doctor.%ld", (long)getpid());
        a = openat(dirfd, name, O_RDWR | O_CREAT | O_EXCL | fl, 0600);
        b = a < 0 ? -1 : openat(dirfd, name, O_RDWR | fl);
        if (a < 0)
            name[0] = '\0';
    }
    if (a < 0 || b < 0) {
        int e = -errno;

        if (a >= 0)
            close(a);
        return e;
    }
    *ret_a = a;
    *ret_b = b;
    return 0;
}

static void
doc_locks(struct doctor *doc, const lockd_space *space)
{
    char name[64];
    int writable = faccessat(AT_FDCWD, doc->o->dir, W_OK | X_OK, AT_EACCESS) == 0;
    int a = -1, b = -1, r;

    r = lock_files(lockd_space_fd(space), writable, name, sizeof(name), &a, &b);
    if (r == -ENOENT && !writable) {
        doc_say(doc, DOC_NOTE, "locks",
                "not tested: the lockspace cannot be written and has no settings file to "
                "test on");
        return;
    }
    if (r == 0)
        r = lock_pair(a, b, writable ? F_WRLCK : F_RDLCK);
    if (a >= 0)
        close(a);
    if (b >= 0)
        close(b);
    if (name[0])
        (void)unlinkat(lockd_space_fd(space), name, 0);
    if (r == 0)
        doc_say(doc, DOC_OK, "locks", "OFD locks work here (tested on %s)",
                !writable ? "the settings file"
                : name[0] ? "a scratch file, removed"
                          : "an unnamed O_TMPFILE");
    else
        doc_say(doc, DOC_ERROR, "locks",
                "OFD locks do not work here: %s (%s): no lease can be taken in this "
                "lockspace",
                strerror(-r), strerrorname_np(-r) ? strerrorname_np(-r) : "?");
}

/*
 * The helper's own verification, on this lockspace: a probe lease of a
 * reserved resource name ("lockd-doctor probe HOST PID", never a disk's),
 * taken exclusively, handed to the helper for this process (on-loss
 * action: report, so the probe can never be acted on), released and its
 * file removed.  A filesystem where the helper cannot prove a lock is held
 * (a FUSE filesystem whose server keeps the locks, before lockd asked it)
 * refuses it, and every real hand-over would be refused too.  Needs a
 * lockspace whose settings file exists (doctor writes none) and that this
 * user may create files in.
 */
static void
doc_helper_probe(struct doctor *doc, const lockd_space *ro, lockd_conn *conn)
{
    char host[256] = "", res[320], key[LOCKD_KEY_SIZE];
    const char *keys[] = {key};
    lockd_space *space = NULL;
    lockd_lease *lease = NULL;
    int r;

    if (!lockd_space_recorded(ro)) {
        doc_say(doc, DOC_NOTE, "helper",
                "the helper's lease check was not tried: the lockspace has no settings file "
                "yet, and doctor writes none (the first lockdctl run or acquire does)");
        return;
    }
    (void)gethostname(host, sizeof(host) - 1);
    snprintf(res, sizeof(res), "lockd-doctor probe %s %ld", host, (long)getpid());
    r = lockd_key_resource(res, strlen(res), key);
    if (r == 0)
        r = lockd_space_open(doc->o->dir, doc->o->mode_flag, &space);
    if (r == 0)
        r = lockd_acquire(space, 1, keys, NULL, LOCKD_TRY, &lease);
    if (r < 0) {
        doc_say(doc, r == -EACCES || r == -EROFS || r == -EPERM ? DOC_NOTE : DOC_WARNING,
                "helper",
                "the helper's lease check was not tried: cannot create a probe lease in %s: "
                "%s%s",
                doc->o->dir, strerror(-r),
                r == -EACCES || r == -EPERM
                    ? " (a lockspace of another user: run doctor as its owner)"
                    : "");
        lockd_space_close(space);
        return;
    }
    r = lockd_conn_register_on_loss(conn, (int32_t)getpid(), -1, NULL, "lockdctl doctor",
                                    LOCKD_ON_LOSS_REPORT, NULL);
    if (r == 0)
        r = lockd_conn_handoff(conn, (int32_t)getpid(), lease, NULL, NULL);
    if (r == 0)
        (void)lockd_conn_release(conn, (int32_t)getpid(), 0, NULL);
    (void)lockd_lease_release(lease);
    (void)unlinkat(lockd_space_fd(space), key, 0);
    lockd_space_close(space);
    if (r == 0)
        doc_say(doc, DOC_OK, "helper",
                "the helper verified a probe lease here: it can hold leases on this "
                "filesystem");
    else if (r == -EBADFD)
        doc_say(doc, DOC_ERROR, "helper",
                "the helper refused a probe lease as not locked: it cannot verify locks on "
                "this filesystem, and would refuse every lease handed to it here");
    else
        doc_say(doc, DOC_WARNING, "helper", "the helper's lease check failed: %s",
                strerror(-r));
}

/* Whether a socket listens at path in this network namespace, from
 * /proc/net/unix: 1 yes, 0 no (or not known). */
static int
unix_listening(const char *path)
{
    FILE *fp = fopen("/proc/net/unix", "re");
    char *line = NULL;
    size_t cap = 0;
    int found = 0;

    while (fp && !found && getline(&line, &cap, fp) > 0) {
        unsigned long flags;
        int n = -1;

        /* "Num RefCount Protocol Flags Type St Inode Path"; the header line
         * fails the scan.  __SO_ACCEPTCON (1 << 16) in Flags: listening. */
        if (sscanf(line, "%*s %*x %*x %lx %*x %*x %*u %n", &flags, &n) < 1 || n < 0)
            continue;
        line[strcspn(line, "\n")] = '\0';
        found = (flags & (1UL << 16)) && strcmp(line + n, path) == 0;
    }
    free(line);
    if (fp)
        fclose(fp);
    return found;
}

/* The helper's socket refused this user (EACCES: a 0600 socket of root's,
 * or a directory on its path this user may not search): that is no sign
 * of a dead helper, and says nothing wrong with the lockspace. */
static void
doc_helper_denied(struct doctor *doc, const char *path)
{
    char mode[96] = "";
    struct stat st;

    if (stat(path, &st) == 0)
        snprintf(mode, sizeof(mode), " (socket mode %04o, owner uid %u)",
                 (unsigned)(st.st_mode & 07777), (unsigned)st.st_uid);
    if (unix_listening(path))
        doc_say(doc, DOC_NOTE, "helper",
                "a helper is running at %s but you may not talk to it%s: run doctor as "
                "root to check it",
                path, mode);
    else
        doc_say(doc, DOC_NOTE, "helper",
                "you may not connect to %s%s, so whether a helper answers there is not "
                "known: run doctor as root to check it",
                path, mode);
}

/* Nothing answers at path (ECONNREFUSED): a socket file with no helper
 * listening is a stale one; anything else is no socket at all. */
static void
doc_helper_refused(struct doctor *doc, const char *path)
{
    struct stat st;

    if (stat(path, &st) == 0 && !S_ISSOCK(st.st_mode))
        doc_say(doc, DOC_ERROR, "helper",
                "%s is not a socket, so no helper answers there: remove it, or name the "
                "helper's socket with --socket",
                path);
    else
        doc_say(doc, DOC_ERROR, "helper",
                "%s is a stale socket: no helper answers there (connection refused); "
                "start lockd-helper, which replaces it",
                path);
}

static void
doc_helper(struct doctor *doc, const lockd_space *space)
{
    const char *path = doc->o->socket;
    uint64_t owners = 0, leases = 0, stored = 0;
    lockd_conn *conn = NULL;
    int r;

    if (!path) {
        doc_say(doc, DOC_NOTE, "helper",
                "no helper socket to look for (XDG_RUNTIME_DIR is unset): lockdctl run "
                "works without one; acquire, release and status need it");
        return;
    }
    if (!socket_present(path)) {
        doc_say(doc, DOC_NOTE, "helper",
                "no helper at %s: lockdctl run works without one; acquire, release and "
                "status need it",
                path);
        return;
    }
    r = lockd_conn_open(path, &conn);
    if (r == -EACCES || r == -EPERM) {
        doc_helper_denied(doc, path);
        return;
    }
    if (r == -ECONNREFUSED) {
        doc_helper_refused(doc, path);
        return;
    }
    if (r == 0)
        r = lockd_conn_status(conn, &owners, &leases, &stored);
    if (r < 0) {
        lockd_conn_close(conn);
        doc_say(doc, DOC_ERROR, "helper",
                "%s exists but no helper answers there: %s (is lockd-helper running?)",
                path, strerror(-r));
        return;
    }
    doc_say(doc, DOC_OK, "helper",
            "lockd-helper answers at %s: %" PRIu64 " owner%s, %" PRIu64 " lease%s, %" PRIu64
            " in systemd's fd store",
            path, owners, owners == 1 ? "" : "s", leases, leases == 1 ? "" : "s", stored);
    if (space)
        doc_helper_probe(doc, space, conn);
    lockd_conn_close(conn);
    if (stored < leases)
        doc_say(doc, DOC_NOTE, "helper",
                "%" PRIu64
                " leases are not in systemd's fd store: they survive a re-exec of "
                "the helper but not a crash",
                leases - stored);
}

/* How many more descriptors this process may open, and the system's use. */
static void
doc_fds(struct doctor *doc)
{
    unsigned long used = 0, unused = 0, max = 0;
    struct rlimit rl;
    FILE *fp;

    if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
        return;
    fp = fopen("/proc/sys/fs/file-nr", "re");
    if (fp) {
        if (fscanf(fp, "%lu %lu %lu", &used, &unused, &max) != 3)
            max = 0;
        fclose(fp);
    }
    if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max < 4096)
        doc_say(doc, DOC_WARNING, "fds",
                "hard limit of %lu open files: each held lease is one open file, so the "
                "helper can hold at most about that many",
                (unsigned long)rl.rlim_max);
    else if (max > 0 && used > max / 10 * 9)
        doc_say(doc, DOC_WARNING, "fds", "the system has %lu of %lu open files in use",
                used, max);
    else
        doc_say(doc, DOC_OK, "fds",
                "open files: soft limit %lu, hard limit %lu (the helper raises its soft "
                "limit "
                "to the hard one; each lease it holds is one)",
                (unsigned long)rl.rlim_cur, (unsigned long)rl.rlim_max);
}

/* What doc_leases() found in the directory. */
struct lease_count {
    unsigned long held, stale, planted, leftovers;
    unsigned long unreadable; /* lease files this user may not open (0600, root's) */
    unsigned long failed;     /* probed with another error, the last in err */
    unsigned long foreign;    /* owned by neither this user nor root; one is uid */
    uid_t uid;
    int err;
};

/* One directory entry into c. */
static void
lease_count_one(const lockd_space *space, const char *name, struct lease_count *c)
{
    struct stat st;
    int s;

    if (strncmp(name, SETTINGS_NAME ".", sizeof(SETTINGS_NAME)) == 0 ||
        strncmp(name, ".lockd-doctor.", 14) == 0)
        c->leftovers++;
    if (!lockd_key_valid(name))
        return;
    if (fstatat(lockd_space_fd(space), name, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
        S_ISREG(st.st_mode) && st.st_uid != geteuid() && st.st_uid != 0) {
        c->foreign++;
        c->uid = st.st_uid;
    }
    s = lockd_probe(space, name, NULL);
    if (s == LOCKD_FREE)
        c->stale++;
    else if (s == LOCKD_SHARED || s == LOCKD_EXCLUSIVE)
        c->held++;
    else if (s == -ELOOP || s == -EISDIR || s == -ENXIO)
        c->planted++;
    else if (s == -EACCES || s == -EPERM)
        c->unreadable++;
    else if (s < 0) {
        c->failed++;
        c->err = -s;
    }
}

/* Lease files: held, unused (stale), and anything planted under a key name;
 * those this user cannot open are counted as such, never left out. */
static void
doc_leases(struct doctor *doc, const lockd_space *space)
{
    struct lease_count c = {0};
    unsigned long total;
    struct dirent *de;
    char unread[160] = "";
    int fd = openat(lockd_space_fd(space), ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    DIR *d = fd < 0 ? NULL : fdopendir(fd);

    if (!d) {
        int e = errno;

        if (fd >= 0)
            close(fd);
        doc_say(doc, DOC_ERROR, "leases", "cannot list the lockspace: %s%s", strerror(e),
                e == EACCES ? " (its lease files are not counted: run doctor as root)"
                            : "");
        return;
    }
    while ((de = readdir(d)))
        lease_count_one(space, de->d_name, &c);
    closedir(d);
    if (c.planted)
        doc_say(
            doc, DOC_ERROR, "leases",
            "%lu entries named like leases are not regular files (planted symlinks, "
            "directories or FIFOs): no lease of those disks can be taken; remove them",
            c.planted);
    if (c.foreign)
        doc_say(doc, DOC_WARNING, "leases",
                "%lu lease file%s owned by uid %u, neither you nor root: that user can "
                "keep them locked and block those disks: %s%s%s",
                c.foreign, c.foreign == 1 ? " is" : "s are", (unsigned)c.uid,
                geteuid() == 0 ? "chown root:root " : "use a lockspace of your own",
                geteuid() == 0 ? doc->o->dir : "", geteuid() == 0 ? "/*" : "");
    if (c.failed)
        doc_say(doc, DOC_WARNING, "leases", "%lu lease file%s could not be checked: %s",
                c.failed, c.failed == 1 ? "" : "s", strerror(c.err));
    if (c.leftovers)
        doc_say(doc, DOC_NOTE, "leases",
                "%lu temporary files left by an interrupted lockd (%s.*, "
                ".lockd-doctor.*) may "
                "be removed",
                c.leftovers, SETTINGS_NAME);
    total = c.held + c.stale + c.unreadable + c.failed;
    if (c.unreadable)
        snprintf(unread, sizeof(unread),
                 " (%lu unreadable to you: whether they are held is not known; run "
                 "doctor as root)",
                 c.unreadable);
    doc_say(doc, c.unreadable ? DOC_NOTE : DOC_OK, "leases",
            "%lu lease file%s%s: %lu held, %lu unused%s", total, total == 1 ? "" : "s",
            unread, c.held, c.stale,
            c.stale ? " (harmless; lockdctl gc removes them)" : "");
}

/*
 * doctor: check the lockspace and the helper and say what is wrong.  It
 * changes nothing: the lockspace is opened read-only (no settings file is
 * written, no index created); the lock test uses an unnamed O_TMPFILE, or a
 * scratch file it removes at once.  Exit 0 only when all is well.
 */
/*
 * doctor --direct DISK...: what a direct lease (the lock on the disk
 * itself, no lockspace) protects for each disk: a lock on a /dev node is
 * that node's, kept by this host's kernel only, so another host that sees
 * the LUN is not kept out; on an image file it reaches as far as the file's
 * filesystem shares its locks.
 */
static int
doc_direct(struct doctor *doc, int argc, char **argv)
{
    const struct opts *o = doc->o;
    struct stat st;
    int i;

    if (o->json)
        printf("{\"direct\":true,\"checks\":[");
    else
        printf("direct leases (no lockspace)\n");
    if (argc == 0)
        doc_say(doc, DOC_NOTE, "direct",
                "a direct lease is a lock on the disk itself: on a /dev node it excludes "
                "guests of this host only; name disks to check each");
    for (i = 0; i < argc; i++) {
        char real[PATH_MAX];
        struct mount_info m;

        memset(&m, 0, sizeof(m));
        if (stat(argv[i], &st) < 0)
            doc_say(doc, DOC_ERROR, "direct", "%s: %s", argv[i], strerror(errno));
        else if (S_ISBLK(st.st_mode))
            doc_say(
                doc, DOC_WARNING, "direct",
                "%s is a block device: its direct lease is a lock on this host's device "
                "node, so a guest on another host that sees the same LUN is NOT kept "
                "out. Use a lockspace on shared storage (or an LVM or SCSI lockspace) "
                "for disks that several hosts see",
                argv[i]);
        else if (!S_ISREG(st.st_mode))
            doc_say(doc, DOC_ERROR, "direct",
                    "%s is neither a regular file nor a block device", argv[i]);
        else if (realpath(argv[i], real) && mount_find(real, &m) == 0 &&
                 fs_is_network(m.fstype))
            doc_say(
                doc, DOC_OK, "direct",
                "%s is on %s from %s: its direct lease is seen by every host that mounts "
                "it with working locks",
                argv[i], m.fstype, m.source);
        else
            doc_say(
                doc, DOC_NOTE, "direct",
                "%s is on a local filesystem: its direct lease excludes guests of this "
                "host only (all that can reach it)",
                argv[i]);
    }
    doc_helper(doc, NULL);
    if (o->json) {
        printf("],\"ok\":%s}\n", doc->worst <= DOC_NOTE ? "true" : "false");
        json_complete();
    } else if (doc->worst <= DOC_NOTE)
        printf("all is well\n");
    else
        printf("%d error%s, %d warning%s\n", doc->errors, doc->errors == 1 ? "" : "s",
               doc->warnings, doc->warnings == 1 ? "" : "s");
    return doc->worst <= DOC_NOTE ? 0 : EXIT_FAIL;
}

int
cmd_doctor(const struct opts *o, int argc, char **argv)
{
    struct doctor doc = {.o = o};
    lockd_space *space = NULL;

    if (o->direct)
        return doc_direct(&doc, argc, argv);
    if (argc > 0)
        return usage_error("doctor: takes no arguments (but DISK... with --direct)");
    if (no_lockspace(o) != 0)
        return EXIT_FAIL;
    if (o->json) {
        printf("{\"lockspace\":");
        json_str(o->dir);
        printf(",\"checks\":[");
    } else
        printf("lockspace %s\n", o->dir);
    if (doc_directory(&doc) == 0 && (space = doc_settings(&doc))) {
        doc_filesystem(&doc, space);
        doc_locks(&doc, space);
        doc_leases(&doc, space);
    }
    doc_helper(&doc, space);
    doc_fds(&doc);
    lockd_space_close(space);
    if (o->json) {
        printf("],\"ok\":%s}\n", doc.worst <= DOC_NOTE ? "true" : "false");
        json_complete();
    } else if (doc.worst <= DOC_NOTE)
        printf("all is well\n");
    else
        printf("%d error%s, %d warning%s\n", doc.errors, doc.errors == 1 ? "" : "s",
               doc.warnings, doc.warnings == 1 ? "" : "s");
    return doc.worst <= DOC_NOTE ? 0 : EXIT_FAIL;
}
