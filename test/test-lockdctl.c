/* SPDX-License-Identifier: MIT */
/*
 * test-lockdctl.c: lockdctl as a user runs it.  Every case execs the built
 * ./lockdctl (and ./lockd-helper where a helper is needed) with a private
 * lockspace and socket in its scratch directory, and checks what a user sees:
 * the exit status, stdout (against test/golden/ where it is deterministic,
 * or parsed as JSON), the one-line error on stderr, and, through the
 * library, what is actually held afterwards.
 *
 * Holders are real processes: `lockdctl run DISK -- sh -c 'echo ready; read
 * x; exit N'` prints "ready" once it holds, and exits N when the case writes
 * a line; its pid is lockdctl's, then sh's (run execs CMD).  Nothing sleeps
 * for a fixed time: cases wait on pipes, waitpid(), /proc/locks and
 * WAIT_UNTIL.
 *
 * The doctor cases use the two test seams lockdctl(1) documents as test-only:
 * LOCKD_TEST_MOUNTINFO (a fake mountinfo file) and LOCKD_TEST_LOCK_FAIL (an
 * errno name the lock test fails with).  The read-only case bind-mounts the
 * lockspace read-only in a private mount namespace of its own (needs root,
 * as `make check` runs).
 *
 * The programs are found beside this test's directory (../lockdctl,
 * ../lockd-helper, golden files in ./golden); LOCKD_TEST_LOCKDCTL and
 * LOCKD_TEST_HELPER name other builds to run the same cases against.
 */
#include "test.h"
#include "util.h"

#include <ctype.h>
#include <dirent.h>
#include <grp.h>
#include <limits.h>
#include <pty.h>
#include <sched.h>
#include <stdarg.h>
#include <stdint.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>

#include "lockd.h"

static char ctl_path[PATH_MAX], helper_path[PATH_MAX], golden_dir[PATH_MAX];

#define UUID_A "6f1c7c6e-1d2b-4e55-9a3c-0c2f4a1b7d10"
#define UUID_B "0b9a1f44-8c77-4d2e-b1a0-5e6f7a8b9c0d"

/* ------------------------------------------------------------------------
 * Running lockdctl
 */

struct res {
    int status;
    char *out, *err;
};

static char *
slurp(const char *path)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = fopen(path, "re");

    if (!f)
        TEST_FAIL("%s: %s", path, strerror(errno));
    if (getdelim(&buf, &len, '\0', f) < 0) {
        free(buf);
        buf = strdup("");
    }
    fclose(f);
    return buf;
}

/* Open path for a child's output. */
static int
out_file(const char *path)
{
    return open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
}

/* Child side: stdin, stdout and stderr from the fds given (-1: /dev/null),
 * then exec argv. */
static void
child_exec(char *const *argv, int in, int out, int err)
{
    /* Die with the case, even when it fails half-way: a holder left
     * behind would keep test/run's output pipe open forever. */
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || getppid() == 1)
        _exit(123);
    signal(SIGPIPE, SIG_DFL);
    if (in < 0)
        in = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (out < 0)
        out = open("/dev/null", O_WRONLY | O_CLOEXEC);
    if (err < 0)
        err = open("/dev/null", O_WRONLY | O_CLOEXEC);
    if (in < 0 || out < 0 || err < 0 || dup2(in, 0) < 0 || dup2(out, 1) < 0 ||
        dup2(err, 2) < 0)
        _exit(120);
    execv(argv[0], argv);
    _exit(121);
}

/* How ctl_how() runs lockdctl, besides as the case's own process does. */
enum {
    CTL_PLAIN = 0,
    CTL_NOBODY = 1, /* no environment at all, and not root (uid 65534 if root) */
    CTL_NEWPID = 2, /* in a pid namespace of its own: no other process is seen */
};

/* Child side of ctl_va for CTL_NOBODY and CTL_NEWPID; never returns. */
static void
ctl_child(char *const *argv, int how, int out, int err)
{
    pid_t pid;

    if (how & CTL_NOBODY) {
        clearenv();
        if (geteuid() == 0 &&
            (setgroups(0, NULL) < 0 || setgid(65534) < 0 || setuid(65534) < 0))
            _exit(122);
    }
    if (!(how & CTL_NEWPID))
        child_exec(argv, -1, out, err);
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || unshare(CLONE_NEWPID) < 0)
        _exit(124);
    pid = fork();
    if (pid < 0)
        _exit(125);
    if (pid == 0)
        child_exec(argv, -1, out, err);
    _exit(test_wait(pid));
}

/* Run lockdctl with the NULL-terminated argument list ap, as how says;
 * wait for it. */
static void
ctl_how_va(struct res *res, int how, va_list ap)
{
    static unsigned seq;
    char *argv[64], out[64], err[64];
    const char *a;
    size_t n = 0;
    pid_t pid;

    /* Another uid runs a copy: the checkout may be under a 0700 directory. */
    argv[n++] = (how & CTL_NOBODY) && geteuid() == 0
                    ? (char *)(exists(test_path("nobody-lockdctl"))
                                   ? test_path("nobody-lockdctl")
                                   : copy_program(ctl_path, "nobody-lockdctl"))
                    : ctl_path;
    while ((a = va_arg(ap, const char *)) && n < 63)
        argv[n++] = (char *)a;
    argv[n] = NULL;
    snprintf(out, sizeof(out), "ctl-%u.out", seq);
    snprintf(err, sizeof(err), "ctl-%u.err", seq++);
    fflush(NULL);
    pid = fork();
    if (pid < 0)
        TEST_FAIL("fork: %s", strerror(errno));
    if (pid == 0)
        ctl_child(argv, how, out_file(out), out_file(err));
    res->status = test_wait(pid);
    res->out = slurp(out);
    res->err = slurp(err);
}

static void
ctl_va(struct res *res, va_list ap)
{
    ctl_how_va(res, CTL_PLAIN, ap);
}

static void ctl_how(struct res *res, int how, ...) __attribute__((sentinel));

static void
ctl_how(struct res *res, int how, ...)
{
    va_list ap;

    va_start(ap, how);
    ctl_how_va(res, how, ap);
    va_end(ap);
}

static void ctl(struct res *res, ...) __attribute__((sentinel));

static void
ctl(struct res *res, ...)
{
    va_list ap;

    va_start(ap, res);
    ctl_va(res, ap);
    va_end(ap);
}

static void
res_free(struct res *res)
{
    free(res->out);
    free(res->err);
    res->out = res->err = NULL;
}

/* Run lockdctl, expect exit status st; returns res for more checks. */
#define CTL_EXPECT(res, st, ...)                                                         \
    do {                                                                                 \
        ctl(res, __VA_ARGS__, (char *)NULL);                                             \
        if ((res)->status != (st))                                                       \
            TEST_FAIL("lockdctl %s: status %d, expected %d\nstdout:\n%s\nstderr:\n%s",   \
                      #__VA_ARGS__, (res)->status, (st), (res)->out, (res)->err);        \
    } while (0)

/* The number of lines in s. */
static int
lines(const char *s)
{
    int n = 0;

    for (; *s; s++)
        n += *s == '\n';
    return n;
}

/* A refusal is one line naming what was refused (a usage error adds the
 * "Try 'lockdctl --help'" line, as util-linux tools do). */
static void
assert_one_line_error(const struct res *r, const char *names)
{
    ASSERT_TRUE(strncmp(r->err, "lockdctl: ", 10) == 0);
    ASSERT_CONTAINS(r->err, names);
    if (r->status == 64) {
        ASSERT_INT_EQ(lines(r->err), 2);
        ASSERT_CONTAINS(r->err, "Try 'lockdctl --help'");
    } else
        ASSERT_INT_EQ(lines(r->err), 1);
    ASSERT_STR_EQ(r->out, "");
}

/* ------------------------------------------------------------------------
 * Holders: lockdctl run with a shell that says when it holds
 */

struct proc {
    pid_t pid;
    int in;  /* its stdin */
    int out; /* its stdout */
    char err[64];
};

/* Start lockdctl with args (NULL-terminated), stdin and stdout as pipes. */
static void spawn(struct proc *p, ...) __attribute__((sentinel));

static void
spawn(struct proc *p, ...)
{
    static unsigned seq;
    char *argv[64];
    int inp[2], outp[2];
    const char *a;
    size_t n = 0;
    va_list ap;

    argv[n++] = ctl_path;
    va_start(ap, p);
    while ((a = va_arg(ap, const char *)) && n < 63)
        argv[n++] = (char *)a;
    va_end(ap);
    argv[n] = NULL;
    if (pipe2(inp, O_CLOEXEC) < 0 || pipe2(outp, O_CLOEXEC) < 0)
        TEST_FAIL("pipe2: %s", strerror(errno));
    snprintf(p->err, sizeof(p->err), "spawn-%u.err", seq++);
    fflush(NULL);
    p->pid = fork();
    if (p->pid < 0)
        TEST_FAIL("fork: %s", strerror(errno));
    if (p->pid == 0)
        child_exec(argv, inp[0], outp[1], out_file(p->err));
    close(inp[0]);
    close(outp[1]);
    p->in = inp[1];
    p->out = outp[0];
}

/* Read one line from p's stdout; "" at end of file. */
static const char *
proc_line(struct proc *p)
{
    static char buf[512];
    size_t n = 0;

    while (n + 1 < sizeof(buf)) {
        ssize_t k = read(p->out, buf + n, 1);

        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0 || buf[n] == '\n')
            break;
        n++;
    }
    buf[n] = '\0';
    return buf;
}

/* A command line for run's CMD: say "ready", wait for a line, exit with st. */
#define HOLD_CMD(st) "sh", "-c", "echo ready; read x; exit " #st

/* Start `lockdctl [pre...] DISK -- HOLD_CMD` and wait until it holds. */
static void
hold(struct proc *p, const char *disk, const char *opt1, const char *opt2)
{
    /* A name, held whether or not a file has it (--create-ok). */
    if (opt2)
        spawn(p, "run", "--create-ok", opt1, opt2, disk, "--", HOLD_CMD(0), (char *)NULL);
    else if (opt1)
        spawn(p, "run", "--create-ok", opt1, disk, "--", HOLD_CMD(0), (char *)NULL);
    else
        spawn(p, "run", "--create-ok", disk, "--", HOLD_CMD(0), (char *)NULL);
    if (strcmp(proc_line(p), "ready") != 0) {
        char *e = slurp(p->err);

        TEST_FAIL("holder of %s did not start: status %d: %s", disk, test_wait(p->pid),
                  e);
    }
}

/* Read fd into buf (NUL-terminated) until every writer has closed it (EOF,
 * or EIO on a pty's master). */
static void
read_all(int fd, char *buf, size_t size)
{
    size_t len = 0;
    ssize_t n;

    while (len < size - 1 && (n = read(fd, buf + len, size - 1 - len)) != 0) {
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            break;
        len += (size_t)n;
    }
    buf[len] = '\0';
}

/* Let a holder's CMD exit; returns its (and so lockdctl's) exit status. */
static int
proc_finish(struct proc *p)
{
    /* It may have exited already (EPIPE: SIGPIPE is ignored in cases). */
    if (write(p->in, "\n", 1) != 1 && errno != EPIPE)
        TEST_FAIL("write: %s", strerror(errno));
    close(p->in);
    close(p->out);
    return test_wait(p->pid);
}

/* ------------------------------------------------------------------------
 * The lockspace, seen through the library
 */

/* Set up the case's environment: its own lockspace and socket, whatever the
 * caller's LOCKD_DIR or the machine's /run/lockd. */
static void
case_env(void)
{
    /* The disks the cases name: run and acquire refuse one that does not
     * exist (test_missing_disk). */
    static const char *const disks[] = {"a.img", "b.img", "c.img", "d.img", "iso"};
    size_t i;

    for (i = 0; i < sizeof(disks) / sizeof(disks[0]); i++) {
        int fd = open(test_path(disks[i]), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);

        if (fd < 0)
            TEST_FAIL("%s: %s", disks[i], strerror(errno));
        close(fd);
    }
    setenv("LOCKD_DIR", space_dir(), 1);
    setenv("LOCKD_SOCKET", test_path("h.sock"), 1);
    unsetenv("LOCKD_TEST_MOUNTINFO");
    unsetenv("LOCKD_TEST_LOCK_FAIL");
    signal(SIGPIPE, SIG_IGN);
}

static lockd_space *
space_ro(void)
{
    lockd_space *s = NULL;

    ASSERT_OK(lockd_space_open(space_dir(), LOCKD_OPEN_READONLY, &s));
    return s;
}

/* The key of a disk as lockdctl should compute it: a relative path is the
 * scratch directory (cwd) joined with it. */
static void
ctl_key(const char *disk, char *key)
{
    char path[PATH_MAX + 256];

    if (disk[0] == '/')
        snprintf(path, sizeof(path), "%s", disk);
    else
        snprintf(path, sizeof(path), "%s/%s", test_scratch, disk);
    ASSERT_OK(lockd_key_resource(path, strlen(path), key));
}

/* LOCKD_FREE, LOCKD_SHARED or LOCKD_EXCLUSIVE for disk in the lockspace. */
static int
probe(const char *disk)
{
    char key[LOCKD_KEY_SIZE];
    lockd_space *s;
    int r;

    ctl_key(disk, key);
    r = lockd_space_open(space_dir(), LOCKD_OPEN_READONLY, &s);
    if (r == -ENOENT)
        return LOCKD_FREE;
    ASSERT_OK(r);
    r = lockd_probe(s, key, NULL);
    lockd_space_close(s);
    ASSERT_OK(r);
    return r;
}

/* How many lease files (key-named) the lockspace has; 0 if it is missing. */
static int
lease_files(void)
{
    DIR *d = opendir(space_dir());
    struct dirent *de;
    int n = 0;

    if (!d)
        return 0;
    while ((de = readdir(d)))
        n += lockd_key_valid(de->d_name);
    closedir(d);
    return n;
}

/* Nothing is held in the lockspace: every lease file can be taken now. */
static void
assert_nothing_held(void)
{
    DIR *d = opendir(space_dir());
    struct dirent *de;
    lockd_space *s;

    if (!d)
        return;
    s = space_ro();
    while ((de = readdir(d)))
        if (lockd_key_valid(de->d_name))
            ASSERT_INT_EQ(lockd_probe(s, de->d_name, NULL), LOCKD_FREE);
    closedir(d);
    lockd_space_close(s);
}

/* The names in a directory, sorted and joined, to see that nothing changed. */
static char *
dir_listing(const char *dir)
{
    struct dirent **list;
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    int n = scandir(dir, &list, NULL, alphasort), i;

    for (i = 0; i < n; i++) {
        fprintf(f, "%s\n", list[i]->d_name);
        free(list[i]);
    }
    if (n >= 0)
        free(list);
    else
        fprintf(f, "(missing)\n");
    fclose(f);
    return buf;
}

/* The directory's listing is exactly want. */
static void
assert_listing(const char *dir, const char *want)
{
    char *got = dir_listing(dir);

    ASSERT_STR_EQ(got, want);
    free(got);
}

static void
make_lockspace(uint32_t flags)
{
    lockd_space *s = NULL;

    ASSERT_OK(lockd_space_open(space_dir(), LOCKD_OPEN_CREATE | flags, &s));
    lockd_space_close(s);
}

static void
write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "we");

    if (!f || fputs(text, f) < 0 || fclose(f) != 0)
        TEST_FAIL("%s: %s", path, strerror(errno));
}

/* ------------------------------------------------------------------------
 * The helper
 */

static int
helper_answers(const char *path)
{
    lockd_conn *c = NULL;

    if (lockd_conn_open(path, &c) < 0)
        return 0;
    lockd_conn_close(c);
    return 1;
}

/* Start lockd-helper on the case's socket; wait until it answers. */
static pid_t
helper_start(void)
{
    char *argv[] = {helper_path, "--socket", (char *)test_path("h.sock"), NULL};
    char **wrapped = test_wrapped(argv);
    pid_t pid;

    if (access(helper_path, X_OK) < 0)
        TEST_FAIL("%s: %s (make lockd-helper)", helper_path, strerror(errno));
    fflush(NULL);
    pid = fork();
    if (pid < 0)
        TEST_FAIL("fork: %s", strerror(errno));
    if (pid == 0)
        child_exec(wrapped, -1, -1, out_file("helper.log"));
    if (!WAIT_UNTIL(helper_answers(test_path("h.sock")), 20000))
        TEST_FAIL("lockd-helper did not start: %s", slurp("helper.log"));
    return pid;
}

static void
helper_stop(pid_t pid)
{
    kill(pid, SIGTERM);
    ASSERT_INT_EQ(test_wait(pid), 0);
}

/* How many leases the helper holds. */
static int64_t
helper_leases(void)
{
    uint64_t leases = 0;
    lockd_conn *c = NULL;

    ASSERT_OK(lockd_conn_open(test_path("h.sock"), &c));
    ASSERT_OK(lockd_conn_status(c, NULL, &leases, NULL));
    lockd_conn_close(c);
    return (int64_t)leases;
}

/* A process to own leases: sleeps until killed. */
static pid_t
sleeper(void)
{
    pid_t pid = fork();

    if (pid < 0)
        TEST_FAIL("fork: %s", strerror(errno));
    if (pid == 0) {
        if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || getppid() == 1)
            _exit(123);
        for (;;)
            pause();
    }
    return pid;
}

/* ------------------------------------------------------------------------
 * A small JSON reader: validates a document and flattens it to lines of
 * "path=value" (".disks[0].state=free", ".held#=2" for an array's length),
 * so a case can check fields by name.
 */

struct json {
    const char *p;
    FILE *out;
    int bad;
};

static void json_value(struct json *j, const char *path);

static void
json_ws(struct json *j)
{
    while (*j->p == ' ' || *j->p == '\n' || *j->p == '\t' || *j->p == '\r')
        j->p++;
}

/* A string at j->p; its decoded text goes to buf (non-ASCII \u as '?'). */
static void
json_string(struct json *j, char *buf, size_t size)
{
    size_t n = 0;

    if (*j->p != '"') {
        j->bad = 1;
        return;
    }
    for (j->p++; *j->p && *j->p != '"'; j->p++) {
        char c = *j->p;

        if ((unsigned char)c < 0x20) {
            j->bad = 1;
            return;
        }
        if (c == '\\') {
            j->p++;
            switch (*j->p) {
            case 'n':
                c = '\n';
                break;
            case 't':
                c = '\t';
                break;
            case 'r':
                c = '\r';
                break;
            case 'b':
                c = '\b';
                break;
            case 'f':
                c = '\f';
                break;
            case '"':
            case '\\':
            case '/':
                c = *j->p;
                break;
            case 'u': {
                unsigned v;

                if (sscanf(j->p + 1, "%4x", &v) != 1 ||
                    strspn(j->p + 1, "0123456789abcdefABCDEF") < 4) {
                    j->bad = 1;
                    return;
                }
                c = v < 0x80 ? (char)v : '?';
                j->p += 4;
                break;
            }
            default:
                j->bad = 1;
                return;
            }
        }
        if (n + 1 < size)
            buf[n++] = c;
    }
    if (*j->p != '"') {
        j->bad = 1;
        return;
    }
    j->p++;
    buf[n] = '\0';
}

static void
json_container(struct json *j, const char *path, int array)
{
    char sub[512], name[256];
    int i = 0;

    j->p++;
    json_ws(j);
    if (*j->p == (array ? ']' : '}')) {
        j->p++;
        if (array)
            fprintf(j->out, "%s#=0\n", path);
        return;
    }
    for (;;) {
        json_ws(j);
        if (array)
            snprintf(sub, sizeof(sub), "%s[%d]", path, i);
        else {
            json_string(j, name, sizeof(name));
            json_ws(j);
            if (j->bad || *j->p != ':') {
                j->bad = 1;
                return;
            }
            j->p++;
            snprintf(sub, sizeof(sub), "%s.%s", path, name);
        }
        json_value(j, sub);
        i++;
        json_ws(j);
        if (j->bad)
            return;
        if (*j->p == ',') {
            j->p++;
            continue;
        }
        if (*j->p != (array ? ']' : '}')) {
            j->bad = 1;
            return;
        }
        j->p++;
        break;
    }
    if (array)
        fprintf(j->out, "%s#=%d\n", path, i);
}

static void
json_value(struct json *j, const char *path)
{
    char buf[4096];
    size_t n;

    json_ws(j);
    if (*j->p == '{' || *j->p == '[') {
        json_container(j, path, *j->p == '[');
        return;
    }
    if (*j->p == '"') {
        json_string(j, buf, sizeof(buf));
        fprintf(j->out, "%s=%s\n", path, buf);
        return;
    }
    if (strncmp(j->p, "true", 4) == 0 || strncmp(j->p, "null", 4) == 0)
        n = 4;
    else if (strncmp(j->p, "false", 5) == 0)
        n = 5;
    else
        n = strspn(j->p, "-0123456789.eE+");
    if (n == 0) {
        j->bad = 1;
        return;
    }
    fprintf(j->out, "%s=%.*s\n", path, (int)n, j->p);
    j->p += n;
}

/* Parse text (one JSON document and a newline); fail the case if invalid. */
static char *
json_flat(const char *text)
{
    struct json j = {.p = text};
    char *buf = NULL;
    size_t len = 0;

    j.out = open_memstream(&buf, &len);
    json_value(&j, "");
    json_ws(&j);
    fclose(j.out);
    if (j.bad || *j.p)
        TEST_FAIL("invalid JSON at \"%.20s\" in:\n%s", j.p, text);
    return buf;
}

/* The value at path in a flattened document, or NULL. */
static const char *
json_get(const char *flat, const char *path)
{
    static char val[4096];
    size_t n = strlen(path);
    const char *p = flat;

    while (p && *p) {
        if (strncmp(p, path, n) == 0 && p[n] == '=') {
            size_t l = strcspn(p + n + 1, "\n");

            snprintf(val, sizeof(val), "%.*s", (int)l, p + n + 1);
            return val;
        }
        p = strchr(p, '\n');
        p = p ? p + 1 : NULL;
    }
    return NULL;
}

#define ASSERT_JSON(flat, path, want) ASSERT_STR_EQ(json_get(flat, path), want)

/* ------------------------------------------------------------------------
 * Golden files
 */

static void
assert_golden(const char *name, const char *got)
{
    char path[PATH_MAX + 64];
    char *want;

    snprintf(path, sizeof(path), "%s/%s", golden_dir, name);
    want = slurp(path);
    if (strcmp(want, got) != 0)
        TEST_FAIL("output differs from %s\n--- expected\n%s--- got\n%s", path, want, got);
    free(want);
}

/* Replace every occurrence of from in s by to (s is malloc'd; returns the
 * new string). */
static char *
replace(char *s, const char *from, const char *to)
{
    char *buf = NULL, *p = s, *hit;
    size_t len = 0, n = strlen(from);
    FILE *f = open_memstream(&buf, &len);

    /* Whole words only: a pid's digits also occur inside keys. */
    while ((hit = strstr(p, from))) {
        int word = (hit == s || isspace((unsigned char)hit[-1])) &&
                   (hit[n] == '\0' || isspace((unsigned char)hit[n]));

        fwrite(p, 1, (size_t)(hit - p), f);
        fputs(word ? to : from, f);
        p = hit + n;
    }
    fputs(p, f);
    fclose(f);
    free(s);
    return buf;
}

/* Runs of spaces become one: a table's column widths depend on the pids in
 * it, which the golden file cannot know. */
static void
squeeze(char *s)
{
    char *w = s, *r;

    for (r = s; *r; r++)
        if (!(*r == ' ' && w > s && w[-1] == ' '))
            *w++ = *r;
    *w = '\0';
}

/* ------------------------------------------------------------------------
 * key
 */

static void
test_key_golden(void)
{
    struct res r;

    case_env();
    CTL_EXPECT(&r, 0, "key", "/var/lib/images/guest.qcow2", "/srv/vm/disk0.raw",
               "/var/lib/libvirt/images/web 1.img");
    assert_golden("key.out", r.out);
    /* No lockspace yet: verbatim keys need none, and lockdctl says what it
     * assumed, and creates nothing. */
    ASSERT_CONTAINS(r.err, "assuming verbatim");
    ASSERT_TRUE(access(space_dir(), F_OK) < 0);
    res_free(&r);
    CTL_EXPECT(&r, 0, "key", "--resource", "rbd:pool/guest-disk",
               "iqn.2024-01.org.example:lun0");
    assert_golden("key-resource.out", r.out);
    ASSERT_STR_EQ(r.err, "");
    res_free(&r);
}

static void
test_key_relative_paths(void)
{
    char want[LOCKD_KEY_SIZE], line[PATH_MAX + 256];
    struct res r;

    case_env();
    make_lockspace(0);
    /* "." and repeated slashes go, ".." stays as written (and is warned
     * of: it makes a lease of its own). */
    CTL_EXPECT(&r, 0, "key", "a//./b/../c.img");
    ctl_key("a/b/../c.img", want);
    snprintf(line, sizeof(line), "%s  %s/a/b/../c.img\n", want, test_scratch);
    ASSERT_STR_EQ(r.out, line);
    snprintf(line, sizeof(line),
             "lockdctl: warning: %s/a/b/../c.img: spelled with a '..' component; keys are "
             "taken from the path as written (as libvirt and virtlockd do), so this "
             "spelling has a lease of its own\n",
             test_scratch);
    ASSERT_STR_EQ(r.err, line);
    res_free(&r);
    CTL_EXPECT(&r, 0, "key", "a//./b/c.img");
    ASSERT_STR_EQ(r.err, "");
    res_free(&r);
    /* A path given absolute is hashed exactly as given. */
    CTL_EXPECT(&r, 0, "key", "/x//y/./z");
    ASSERT_OK(lockd_key_resource("/x//y/./z", 9, want));
    ASSERT_TRUE(strncmp(r.out, want, 64) == 0);
    res_free(&r);
}

/*
 * Spellings that libvirt passes on as written and so get leases of their
 * own (test-keys.c's libvirt_spellings): each is keyed as written and warned
 * of in one line naming the disk and what is odd in it; the plain spelling
 * and resource names are not.  The warning does not change the exit status,
 * and canonical lockspaces, which fold every spelling, get none.
 */
static void
test_spelling_warnings(void)
{
    static const struct {
        const char *path, *why;
    } odd[] = {
        {"//images/a.qcow2", "a repeated '/'"},
        {"/images//a.qcow2", "a repeated '/'"},
        {"/images/a.qcow2/", "a trailing '/'"},
        {"/images/./a.qcow2", "a '.' component"},
        {"/images/../images/a.qcow2", "a '..' component"},
        {"/images/a.qcow2/.", "a '.' component"},
    };
    char want[LOCKD_KEY_SIZE], line[512];
    struct res r;

    case_env();
    make_lockspace(0);
    for (size_t i = 0; i < sizeof(odd) / sizeof(odd[0]); i++) {
        CTL_EXPECT(&r, 0, "key", odd[i].path);
        ASSERT_OK(lockd_key_resource(odd[i].path, strlen(odd[i].path), want));
        ASSERT_TRUE(strncmp(r.out, want, 64) == 0);
        snprintf(line, sizeof(line), "lockdctl: warning: %s: spelled with %s;", odd[i].path,
                 odd[i].why);
        ASSERT_TRUE(strncmp(r.err, line, strlen(line)) == 0);
        ASSERT_INT_EQ(lines(r.err), 1);
        res_free(&r);
    }
    CTL_EXPECT(&r, 0, "key", "/images/a.qcow2", "/", "/images/.a", "/images/..b");
    ASSERT_STR_EQ(r.err, "");
    res_free(&r);
    CTL_EXPECT(&r, 0, "key", "--resource", "//pool/x/");
    ASSERT_STR_EQ(r.err, "");
    res_free(&r);
    /* run warns too, and still takes the lease. */
    CTL_EXPECT(&r, 0, "run", "--create-ok", "/images//b.qcow2", "--", "true");
    ASSERT_CONTAINS(r.err, "warning: /images//b.qcow2: spelled with a repeated '/'");
    res_free(&r);
}

/*
 * A gc batch that holds the lockspace's index for longer than the ten tries
 * of LOCKD_INDEX_WAIT_MS each that run gives a new lease: 75 and a line that
 * says so (not "busy", and not --conflict-exit-code's value: the disk is
 * free).  An existing lease needs no index.
 */
static void
test_run_index_held(void)
{
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 1};
    char index[PATH_MAX];
    struct res r;
    int fd;

    case_env();
    make_lockspace(0);
    CTL_EXPECT(&r, 0, "run", "--create-ok", "/images/old.qcow2", "--", "true");
    res_free(&r);
    snprintf(index, sizeof(index), "%s/.lockd-index", space_dir());
    fd = open(index, O_RDWR | O_CLOEXEC);
    ASSERT_OK(sys(fd));
    ASSERT_OK(sys(fcntl(fd, F_OFD_SETLK, &fl)));
    ctl(&r, "run", "--conflict-exit-code", "9", "--create-ok", "/images/new.qcow2", "--",
        "true", (char *)NULL);
    ASSERT_INT_EQ(r.status, 75);
    assert_one_line_error(&r, "/images/new.qcow2: cannot take its lease: a gc of the "
                              "lockspace kept its index locked for too long; try again");
    res_free(&r);
    CTL_EXPECT(&r, 0, "run", "--create-ok", "/images/old.qcow2", "--", "true");
    res_free(&r);
    close(fd);
    CTL_EXPECT(&r, 0, "run", "--create-ok", "/images/new.qcow2", "--", "true");
    res_free(&r);
}

/*
 * stop-helper: refused while guests hold leases (75, saying how many), done
 * with --force (every lease released, the helper exits 0), and at once when
 * nothing is held.
 */
static void
test_stop_helper(void)
{
    char spid[16];
    pid_t helper, owner;
    struct res r;

    case_env();
    helper = helper_start();
    owner = sleeper();
    snprintf(spid, sizeof(spid), "%d", (int)owner);
    CTL_EXPECT(&r, 0, "acquire", "--pid", spid, "a.img", "b.img");
    res_free(&r);
    ctl(&r, "stop-helper", (char *)NULL);
    ASSERT_INT_EQ(r.status, 75);
    assert_one_line_error(&r, "the helper holds 2 leases of 1 guest: stopping it leaves them "
                              "unprotected; give --force");
    res_free(&r);
    ASSERT_INT_EQ(helper_leases(), 2);
    ASSERT_INT_EQ(probe("a.img"), LOCKD_EXCLUSIVE);
    CTL_EXPECT(&r, 0, "stop-helper", "--force");
    ASSERT_STR_EQ(r.out, "lockd-helper stopped: 2 leases of 1 guest released, those guests "
                         "now run unprotected\n");
    res_free(&r);
    ASSERT_INT_EQ(test_wait(helper), 0);
    ASSERT_INT_EQ(probe("a.img"), LOCKD_FREE);
    ASSERT_INT_EQ(probe("b.img"), LOCKD_FREE);
    /* Nothing held: no --force needed. */
    helper = helper_start();
    CTL_EXPECT(&r, 0, "stop-helper");
    res_free(&r);
    ASSERT_INT_EQ(test_wait(helper), 0);
    kill(owner, SIGKILL);
    (void)test_wait(owner);
}

/* Names come from whoever handed a lease over: status shows a control byte
 * of theirs as \xHH, so a newline cannot print a fake row (found by attack). */
static void
test_status_scrubs_names(void)
{
    char spid[16];
    pid_t helper, owner;
    struct res r;

    case_env();
    helper = helper_start();
    owner = sleeper();
    snprintf(spid, sizeof(spid), "%d", (int)owner);
    CTL_EXPECT(&r, 0, "acquire", "--pid", spid, "--name", "vm\n66666 fake\x1b[2J", "a.img");
    res_free(&r);
    CTL_EXPECT(&r, 0, "status");
    ASSERT_CONTAINS(r.out, "vm\\x0a66666 fake\\x1b[2J");
    ASSERT_TRUE(!strchr(r.out, '\x1b'));
    ASSERT_INT_EQ(lines(r.out), 3); /* the header, one row, the summary */
    res_free(&r);
    kill(owner, SIGKILL);
    (void)test_wait(owner);
    helper_stop(helper);
}

/* LOCKD_DIR and LOCKD_SOCKET name absolute paths: a relative one is a usage
 * error, before anything is created. */
static void
test_relative_env_refused(void)
{
    struct res r;

    case_env();
    setenv("LOCKD_DIR", "rel-space", 1);
    ctl(&r, "run", "/images/a.qcow2", "--", "true", (char *)NULL);
    ASSERT_INT_EQ(r.status, 64);
    assert_one_line_error(&r, "LOCKD_DIR=rel-space: not an absolute path");
    ASSERT_TRUE(!exists("rel-space"));
    res_free(&r);
    case_env();
    setenv("LOCKD_SOCKET", "h.sock", 1);
    ctl(&r, "status", (char *)NULL);
    ASSERT_INT_EQ(r.status, 64);
    assert_one_line_error(&r, "LOCKD_SOCKET=h.sock: not an absolute path");
    res_free(&r);
    /* An option given is used instead. */
    ctl(&r, "--socket", test_path("h.sock"), "status", (char *)NULL);
    ASSERT_INT_EQ(r.status, 69);
    res_free(&r);
}

static void
test_key_canonical_new_disk(void)
{
    char real[PATH_MAX + 256], want[LOCKD_KEY_SIZE];
    struct res r;

    case_env();
    make_lockspace(LOCKD_OPEN_CANONICAL);
    ASSERT_OK(mkdir("images", 0755) < 0 ? -errno : 0);
    ASSERT_OK(symlink("images", "link") < 0 ? -errno : 0);
    /* The disk does not exist yet: the key is realpath(dir) + name, the same
     * whichever spelling of the directory is used. */
    CTL_EXPECT(&r, 0, "key", "link/new.qcow2");
    snprintf(real, sizeof(real), "%s/images/new.qcow2", test_scratch);
    ASSERT_OK(lockd_key_resource(real, strlen(real), want));
    ASSERT_TRUE(strncmp(r.out, want, 64) == 0);
    res_free(&r);
    CTL_EXPECT(&r, 0, "--json", "key", "images/new.qcow2");
    {
        char *flat = json_flat(r.out);

        ASSERT_JSON(flat, ".key_mode", "canonical");
        ASSERT_JSON(flat, ".recorded", "true");
        ASSERT_JSON(flat, ".keys[0].key", want);
        ASSERT_JSON(flat, ".keys#", "1");
        free(flat);
    }
    res_free(&r);
    /* A dangling symlink is an error that names the disk. */
    ASSERT_OK(symlink("nowhere/x", "dangling") < 0 ? -errno : 0);
    CTL_EXPECT(&r, 1, "key", "dangling");
    assert_one_line_error(&r, "dangling");
    res_free(&r);
}

static void
test_key_mode_mismatch(void)
{
    struct res r;

    case_env();
    make_lockspace(0);
    CTL_EXPECT(&r, 1, "--key-mode", "canonical", "key", "/a.img");
    assert_one_line_error(&r, "verbatim");
    ASSERT_CONTAINS(r.err, "canonical");
    ASSERT_CONTAINS(r.err, space_dir());
    res_free(&r);
    CTL_EXPECT(&r, 1, "--key-mode=canonical", "run", "--create-ok", "/a.img", "--", "true");
    assert_one_line_error(&r, "canonical");
    res_free(&r);
    ASSERT_INT_EQ(lease_files(), 0);
}

static void
test_key_unrecorded_lockspace(void)
{
    char *before;
    struct res r;

    case_env();
    ASSERT_OK(mkdir(space_dir(), 0755) < 0 ? -errno : 0);
    before = dir_listing(space_dir());
    CTL_EXPECT(&r, 0, "--key-mode", "canonical", "key", "/a.img");
    ASSERT_CONTAINS(r.err, "records no key mode yet; assuming canonical");
    res_free(&r);
    CTL_EXPECT(&r, 0, "who", "/a.img");
    ASSERT_CONTAINS(r.err, "assuming verbatim");
    res_free(&r);
    /* Read-only uses never write the settings. */
    assert_listing(space_dir(), before);
    free(before);
}

/* ------------------------------------------------------------------------
 * --help, --version, usage errors
 */

static void
test_help_version(void)
{
    struct res r;

    case_env();
    CTL_EXPECT(&r, 0, "--help");
    assert_golden("help.out", r.out);
    ASSERT_STR_EQ(r.err, "");
    res_free(&r);
    CTL_EXPECT(&r, 0, "run", "-h");
    assert_golden("help.out", r.out);
    res_free(&r);
    CTL_EXPECT(&r, 0, "--version");
    ASSERT_CONTAINS(r.out, LOCKD_VERSION_STRING);
    ASSERT_INT_EQ(lines(r.out), 1);
    res_free(&r);
}

static void
usage_case(const char *names, ...)
{
    struct res r;
    va_list ap;

    va_start(ap, names);
    ctl_va(&r, ap);
    va_end(ap);
    if (r.status != 64)
        TEST_FAIL("%s: status %d, expected 64; stderr: %s", names, r.status, r.err);
    assert_one_line_error(&r, names);
    res_free(&r);
}

static void
test_usage_errors(void)
{
    struct proc p;

    case_env();
    usage_case("no command", (char *)NULL);
    usage_case("unknown command 'frob'", "frob", (char *)NULL);
    usage_case("--bogus", "--bogus", "status", (char *)NULL);
    usage_case("--bogus", "who", "--bogus", "x", (char *)NULL);
    usage_case("-q", "run", "-q", "x", "--", "true", (char *)NULL);
    usage_case("--dir requires an argument", "who", "x", "--dir", (char *)NULL);
    usage_case("--key-mode sideways", "--key-mode", "sideways", "key", "x", (char *)NULL);
    usage_case("key: no disk", "key", (char *)NULL);
    usage_case("empty disk name", "key", "", (char *)NULL);
    usage_case("empty disk name", "run", "", "--", "true", (char *)NULL);
    usage_case("empty disk name", "acquire", "--pid", "1", "", (char *)NULL);
    usage_case("empty disk name", "release", "--pid", "1", "", (char *)NULL);
    usage_case("empty disk name", "who", "a.img", "", (char *)NULL);
    usage_case("run: no disk", "run", "--", "true", (char *)NULL);
    usage_case("'--' and a command", "run", "a.img", "true", (char *)NULL);
    usage_case("no command after '--'", "run", "a.img", "--", (char *)NULL);
    usage_case("--wait=abc", "run", "--wait=abc", "a.img", "--", "true", (char *)NULL);
    usage_case("--wait=-1", "run", "--wait=-1", "a.img", "--", "true", (char *)NULL);
    usage_case("--wait=1x: not a number", "run", "--wait=1x", "a.img", "--", "true",
               (char *)NULL);
    usage_case("--pid given twice", "acquire", "--pid", "1", "-p", "2", "a.img",
               (char *)NULL);
    usage_case("--test does not apply to run", "run", "--test", "a.img", "--", "true",
               (char *)NULL);
    usage_case("--create-ok does not apply to who", "who", "--create-ok", "a.img",
               (char *)NULL);
    usage_case("--conflict-exit-code 300", "run", "--conflict-exit-code", "300", "a.img",
               "--", "true", (char *)NULL);
    usage_case("--conflict-exit-code x", "run", "-E", "x", "a.img", "--", "true",
               (char *)NULL);
    usage_case("--uuid not-a-uuid", "run", "--uuid", "not-a-uuid", "a.img", "--", "true",
               (char *)NULL);
    usage_case("acquire: --pid PID is required", "acquire", "a.img", (char *)NULL);
    usage_case("--pid 0", "acquire", "--pid", "0", "a.img", (char *)NULL);
    usage_case("--pid abc", "release", "--pid", "abc", (char *)NULL);
    usage_case("--shared does not apply to who", "who", "--shared", "a.img",
               (char *)NULL);
    usage_case("--pid does not apply to run", "run", "--pid", "1", "a.img", "--", "true",
               (char *)NULL);
    usage_case("put it after the command", "--shared", "run", "a.img", "--", "true",
               (char *)NULL);
    usage_case("status: takes no arguments", "status", "x", (char *)NULL);
    /* Nothing was created or held by any of them. */
    ASSERT_TRUE(access(space_dir(), F_OK) < 0);
    /* A usage error while another holds the disk holds nothing either. */
    hold(&p, "a.img", NULL, NULL);
    usage_case("--wait=abc", "run", "--wait=abc", "a.img", "--", "true", (char *)NULL);
    ASSERT_INT_EQ(proc_finish(&p), 0);
    assert_nothing_held();
}

/* ------------------------------------------------------------------------
 * run without a helper
 */

/* Unlock, through a copy taken from pid, the lease of disk that pid holds:
 * its lock is gone, as a network filesystem's client loses it. */
static void
unlock_in(pid_t pid, const char *disk)
{
    struct flock fl = {.l_type = F_UNLCK, .l_whence = SEEK_SET, .l_len = 1};
    char key[LOCKD_KEY_SIZE], want[PATH_MAX + 80], link[64], target[PATH_MAX];
    int pidfd, fd, copy, found = 0;
    ssize_t n;

    ctl_key(disk, key);
    snprintf(want, sizeof(want), "%s/%s", space_dir(), key);
    pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
    ASSERT_TRUE(pidfd >= 0);
    for (fd = 0; fd < 1024 && !found; fd++) {
        snprintf(link, sizeof(link), "/proc/%d/fd/%d", (int)pid, fd);
        n = readlink(link, target, sizeof(target) - 1);
        if (n < 0)
            continue;
        target[n] = '\0';
        if (strcmp(target, want) != 0)
            continue;
        copy = (int)syscall(SYS_pidfd_getfd, pidfd, fd, 0);
        ASSERT_TRUE(copy >= 0);
        ASSERT_OK(sys(fcntl(copy, F_OFD_SETLK, &fl)));
        close(copy);
        found = 1;
    }
    close(pidfd);
    if (!found)
        TEST_FAIL("pid %d holds no fd of %s", (int)pid, want);
}

/*
 * run without a helper leaves a watcher behind, which checks CMD's leases
 * every second and at a loss does --on-loss: kill (the default), stop,
 * report, exec:CMD; one line on stderr names the disk and why.  It holds
 * no copy of a lease between checks, so a lease is free the moment CMD
 * exits (test_run_holds_while_cmd_runs runs back to back).
 */
static void
test_run_watcher_acts(void)
{
    struct proc p;
    char want[PATH_MAX + 256], hook[PATH_MAX + 128], *e;

    case_env();
    hold(&p, "a.img", NULL, NULL);
    unlock_in(p.pid, "a.img");
    ASSERT_INT_EQ(test_wait(p.pid), 128 + SIGKILL);
    close(p.in);
    close(p.out);
    snprintf(want, sizeof(want), "lockdctl: %s/a.img: lease lost: its lock is gone; killing sh (pid %d)\n",
             test_scratch, (int)p.pid);
    ASSERT_STR_EQ(slurp(p.err), want);

    hold(&p, "b.img", "--on-loss=stop", NULL);
    unlock_in(p.pid, "b.img");
    ASSERT_TRUE(WAIT_UNTIL(proc_state(p.pid) == 'T', 5000));
    ASSERT_CONTAINS(slurp(p.err), "b.img: lease lost: its lock is gone; stopping sh");
    ASSERT_OK(sys(kill(p.pid, SIGCONT)));
    ASSERT_INT_EQ(proc_finish(&p), 0);

    hold(&p, "c.img", "--on-loss=report", NULL);
    unlock_in(p.pid, "c.img");
    ASSERT_TRUE(WAIT_UNTIL((e = slurp(p.err)) && strstr(e, "runs on unprotected"), 5000));
    ASSERT_INT_EQ(proc_finish(&p), 0);

    snprintf(hook, sizeof(hook), "--on-loss=exec:echo \"$LOCKD_DISK $LOCKD_ERROR $LOCKD_OWNER_PID\" > %s.tmp && mv %s.tmp %s",
             test_path("hook.out"), test_path("hook.out"), test_path("hook.out"));
    hold(&p, "d.img", hook, NULL);
    unlock_in(p.pid, "d.img");
    ASSERT_TRUE(WAIT_UNTIL(access(test_path("hook.out"), F_OK) == 0, 5000));
    snprintf(want, sizeof(want), "%s/d.img ENOLCK %d\n", test_scratch, (int)p.pid);
    ASSERT_STR_EQ(slurp(test_path("hook.out")), want);
    ASSERT_INT_EQ(proc_finish(&p), 0);
    assert_nothing_held();
}

static void
test_run_returns_cmd_status(void)
{
    struct res r;

    case_env();
    CTL_EXPECT(&r, 0, "run", "a.img", "--", "true");
    res_free(&r);
    CTL_EXPECT(&r, 7, "run", "a.img", "b.img", "--", "sh", "-c", "exit 7");
    res_free(&r);
    /* CMD's arguments are its own, options included. */
    CTL_EXPECT(&r, 0, "run", "a.img", "--", "sh", "-c", "echo \"$@\"", "sh", "--shared",
               "-x");
    ASSERT_STR_EQ(r.out, "--shared -x\n");
    res_free(&r);
    /* A CMD that cannot be run: 127 like the shell, and nothing held. */
    CTL_EXPECT(&r, 127, "run", "a.img", "--", "/nonexistent/cmd");
    assert_one_line_error(&r, "/nonexistent/cmd");
    res_free(&r);
    ASSERT_INT_EQ(lease_files(), 2);
    assert_nothing_held();
}

static void
test_run_holds_while_cmd_runs(void)
{
    struct proc p;
    struct res r;
    char disk[PATH_MAX + 256];

    case_env();
    hold(&p, "a.img", NULL, NULL);
    /* CMD inherited the lease: still held after lockdctl became CMD. */
    ASSERT_INT_EQ(probe("a.img"), LOCKD_EXCLUSIVE);
    CTL_EXPECT(&r, 75, "run", "a.img", "--", "true");
    snprintf(disk, sizeof(disk), "%s/a.img: busy: held exclusively", test_scratch);
    assert_one_line_error(&r, disk);
    res_free(&r);
    /* Another disk is not affected; a relative and an absolute spelling
     * of one disk are one lease. */
    CTL_EXPECT(&r, 0, "run", "b.img", "--", "true");
    res_free(&r);
    CTL_EXPECT(&r, 9, "run", "--conflict-exit-code", "9", "./a.img", "--", "true");
    res_free(&r);
    CTL_EXPECT(&r, 3, "run", "-E", "3", "b.img", "a.img", "--", "true");
    ASSERT_CONTAINS(r.err, "/a.img: busy");
    res_free(&r);
    /* All or nothing: b.img was not kept by the refused run. */
    ASSERT_INT_EQ(probe("b.img"), LOCKD_FREE);
    ASSERT_INT_EQ(proc_finish(&p), 0);
    ASSERT_INT_EQ(probe("a.img"), LOCKD_FREE);
    CTL_EXPECT(&r, 0, "run", "a.img", "--", "true");
    res_free(&r);
}

static void
test_run_shared(void)
{
    struct proc p1, p2;
    struct res r;

    case_env();
    hold(&p1, "iso", "--shared", NULL);
    hold(&p2, "iso", "-s", NULL);
    ASSERT_INT_EQ(probe("iso"), LOCKD_SHARED);
    CTL_EXPECT(&r, 75, "run", "iso", "--", "true");
    ASSERT_CONTAINS(r.err, "busy: held shared");
    res_free(&r);
    CTL_EXPECT(&r, 0, "run", "--shared", "iso", "--", "true");
    res_free(&r);
    ASSERT_INT_EQ(proc_finish(&p1), 0);
    ASSERT_INT_EQ(probe("iso"), LOCKD_SHARED);
    ASSERT_INT_EQ(proc_finish(&p2), 0);
    ASSERT_INT_EQ(probe("iso"), LOCKD_FREE);
}

static void
test_wait_times_out(void)
{
    struct proc p;
    struct res r;
    int64_t t0;

    case_env();
    hold(&p, "a.img", NULL, NULL);
    t0 = test_now_ms();
    CTL_EXPECT(&r, 75, "run", "--wait=1", "a.img", "--", "true");
    ASSERT_TRUE(test_now_ms() - t0 >= 950);
    assert_one_line_error(&r, "a.img: still busy after 1 s");
    res_free(&r);
    CTL_EXPECT(&r, 4, "run", "-w", "0.2", "-E", "4", "a.img", "--", "true");
    res_free(&r);
    ASSERT_INT_EQ(proc_finish(&p), 0);
}

/* Whether /proc/locks shows a blocked request ("->") on the lease of disk;
 * no lease file yet, or no /proc/locks, is no. */
static int
lock_waiter_on_disk(const char *disk)
{
    char key[LOCKD_KEY_SIZE], path[PATH_MAX + 80];
    struct stat st;
    FILE *f;
    int found;

    ctl_key(disk, key);
    snprintf(path, sizeof(path), "%s/%s", space_dir(), key);
    if (stat(path, &st) < 0 || !(f = fopen("/proc/locks", "re")))
        return 0;
    found = locks_blocked_on(f, &st);
    fclose(f);
    return found;
}

static void
test_wait_succeeds_when_holder_exits(void)
{
    struct proc holder, waiter;

    case_env();
    hold(&holder, "a.img", NULL, NULL);
    spawn(&waiter, "run", "--wait", "a.img", "--", "sh", "-c", "echo got; exit 5",
          (char *)NULL);
    /* The kernel says the waiter is blocked on the lease. */
    ASSERT_TRUE(WAIT_UNTIL(lock_waiter_on_disk("a.img"), 5000));
    ASSERT_INT_EQ(proc_finish(&holder), 0);
    ASSERT_STR_EQ(proc_line(&waiter), "got");
    ASSERT_INT_EQ(proc_finish(&waiter), 5);
    /* A timed wait, too. */
    hold(&holder, "a.img", NULL, NULL);
    spawn(&waiter, "run", "--wait=30", "a.img", "--", "sh", "-c", "echo got",
          (char *)NULL);
    ASSERT_INT_EQ(proc_finish(&holder), 0);
    ASSERT_STR_EQ(proc_line(&waiter), "got");
    ASSERT_INT_EQ(proc_finish(&waiter), 0);
}

/* Resources that are not paths: hashed as given, never joined to the cwd. */
static void
test_resource(void)
{
    char key[LOCKD_KEY_SIZE], *flat;
    struct proc p;
    struct res r;

    case_env();
    ASSERT_OK(lockd_key_resource("rbd:pool/img", 12, key));
    hold(&p, "rbd:pool/img", "--resource", NULL);
    CTL_EXPECT(&r, 0, "who", "-r", "--json", "rbd:pool/img");
    flat = json_flat(r.out);
    ASSERT_JSON(flat, ".disks[0].disk", "rbd:pool/img");
    ASSERT_JSON(flat, ".disks[0].key", key);
    ASSERT_JSON(flat, ".disks[0].state", "exclusive");
    free(flat);
    res_free(&r);
    CTL_EXPECT(&r, 75, "run", "--resource", "rbd:pool/img", "--", "true");
    assert_one_line_error(&r, "rbd:pool/img: busy");
    res_free(&r);
    /* As a path it is another lease. */
    CTL_EXPECT(&r, 0, "run", "--create-ok", "rbd:pool/img", "--", "true");
    res_free(&r);
    ASSERT_INT_EQ(proc_finish(&p), 0);
    CTL_EXPECT(&r, 0, "who", "--resource", "rbd:pool/img");
    ASSERT_CONTAINS(r.out, "rbd:pool/img  free");
    res_free(&r);
    {
        /* Through the helper, who names a resource's holder. */
        pid_t helper = helper_start();

        hold(&p, "rbd:pool/img", "--resource", "--name=rbd-guest");
        CTL_EXPECT(&r, 0, "who", "--resource", "rbd:pool/img");
        ASSERT_CONTAINS(r.out, "rbd-guest");
        res_free(&r);
        ASSERT_INT_EQ(proc_finish(&p), 0);
        helper_stop(helper);
    }
}

/* ------------------------------------------------------------------------
 * who, gc
 */

static void
test_who(void)
{
    char want[LOCKD_KEY_SIZE], host[256], spid[16], line[512], *flat;
    struct proc p;
    struct res r;

    case_env();
    make_lockspace(0);
    ASSERT_OK(sys(gethostname(host, sizeof(host))));
    spawn(&p, "run", "-n", "web1", "-u", "6f1c2d3e-0000-4000-8000-00000000abcd", "a.img", "--",
          HOLD_CMD(0), (char *)NULL);
    ASSERT_STR_EQ(proc_line(&p), "ready");
    snprintf(spid, sizeof(spid), "%d", (int)p.pid);
    /* No helper: the holder is named by the lease's holder record. */
    CTL_EXPECT(&r, 0, "who", "a.img", "b.img");
    ASSERT_TRUE(strncmp(r.out, "DISK ", 5) == 0);
    ASSERT_CONTAINS(r.out, "  HOST\n");
    snprintf(line, sizeof(line),
             "/a.img  exclusive  %s  web1  6f1c2d3e-0000-4000-8000-00000000abcd  %s\n", spid,
             host);
    ASSERT_CONTAINS(r.out, line);
    ASSERT_CONTAINS(r.out, "/b.img  free");
    ASSERT_INT_EQ(lines(r.out), 3);
    res_free(&r);
    CTL_EXPECT(&r, 0, "who", "--json", "a.img", "b.img");
    flat = json_flat(r.out);
    ctl_key("a.img", want);
    ASSERT_JSON(flat, ".disks#", "2");
    ASSERT_JSON(flat, ".disks[0].key", want);
    ASSERT_JSON(flat, ".disks[0].state", "exclusive");
    ASSERT_JSON(flat, ".disks[0].holders#", "1");
    ASSERT_JSON(flat, ".disks[0].holders[0].name", "web1");
    ASSERT_JSON(flat, ".disks[0].holders[0].pid", spid);
    ASSERT_JSON(flat, ".disks[0].holders[0].host", host);
    ASSERT_JSON(flat, ".disks[0].record.owner", "web1");
    ASSERT_JSON(flat, ".disks[0].record.host", host);
    ASSERT_JSON(flat, ".disks[0].record.generation", "1");
    ASSERT_TRUE(strstr(json_get(flat, ".disks[0].record.resource"), "/a.img") != NULL);
    ASSERT_JSON(flat, ".disks[1].state", "free");
    ASSERT_JSON(flat, ".disks[1].record", "null");
    ASSERT_TRUE(strstr(json_get(flat, ".disks[1].disk"), "/b.img") != NULL);
    free(flat);
    res_free(&r);
    /* The busy message names it too. */
    CTL_EXPECT(&r, 75, "run", "a.img", "--", "true");
    snprintf(line, sizeof(line),
             "busy: held exclusively by web1 (uuid 6f1c2d3e-0000-4000-8000-00000000abcd, pid %s) "
             "on host %s since ",
             spid, host);
    ASSERT_CONTAINS(r.err, line);
    res_free(&r);
    ASSERT_INT_EQ(proc_finish(&p), 0);
    /* A record whose lease is free names nobody. */
    CTL_EXPECT(&r, 0, "--json", "who", "a.img");
    flat = json_flat(r.out);
    ASSERT_JSON(flat, ".disks[0].state", "free");
    ASSERT_JSON(flat, ".disks[0].holders#", "0");
    ASSERT_JSON(flat, ".disks[0].record", "null");
    free(flat);
    res_free(&r);
}

/* A classic POSIX lock (virtlockd's) has a pid, and who names it. */
static void
test_who_posix_holder(void)
{
    char key[LOCKD_KEY_SIZE], path[PATH_MAX + 80], spid[32], *flat;
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 1};
    int pfd[2], fd;
    pid_t pid;
    char c;
    struct res r;

    case_env();
    make_lockspace(0);
    ctl_key("/v/disk.img", key);
    snprintf(path, sizeof(path), "%s/%s", space_dir(), key);
    ASSERT_OK(pipe(pfd));
    pid = fork();
    if (pid == 0) {
        fd = open(path, O_RDWR | O_CREAT, 0600);
        if (fd < 0 || fcntl(fd, F_SETLK, &fl) < 0 || write(pfd[1], "x", 1) != 1)
            _exit(1);
        pause();
        _exit(0);
    }
    ASSERT_INT_EQ(read(pfd[0], &c, 1), 1);
    snprintf(spid, sizeof(spid), "%d", (int)pid);
    CTL_EXPECT(&r, 0, "--json", "who", "/v/disk.img");
    flat = json_flat(r.out);
    ASSERT_JSON(flat, ".disks[0].state", "exclusive");
    ASSERT_JSON(flat, ".disks[0].holders[0].pid", spid);
    ASSERT_JSON(flat, ".disks[0].holders[0].name", "null");
    free(flat);
    res_free(&r);
    CTL_EXPECT(&r, 75, "run", "--create-ok", "/v/disk.img", "--", "true");
    ASSERT_CONTAINS(r.err, spid);
    ASSERT_CONTAINS(r.err, "POSIX lock");
    res_free(&r);
    kill(pid, SIGKILL);
    test_wait(pid);
}

/* Lease files for count disks /gc/0 .. /gc/<count-1>, none held. */
static void
make_lease_files(int count)
{
    char key[LOCKD_KEY_SIZE], name[64], path[PATH_MAX + 80];
    int i, fd;

    for (i = 0; i < count; i++) {
        snprintf(name, sizeof(name), "/gc/%d", i);
        ctl_key(name, key);
        snprintf(path, sizeof(path), "%s/%s", space_dir(), key);
        fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
        ASSERT_OK(fd < 0 ? -errno : 0);
        close(fd);
    }
}

static void
test_gc_summary(void)
{
    char key[LOCKD_KEY_SIZE], path[PATH_MAX + 80];
    struct proc p;
    struct res r;
    char *flat;

    case_env();
    make_lockspace(0);
    make_lease_files(5);
    hold(&p, "/gc/3", NULL, NULL);
    /* By default files younger than 5 s stay: these were made just now. */
    CTL_EXPECT(&r, 0, "gc");
    ASSERT_STR_EQ(r.out,
                  "gc: removed 0 unused lease files, kept 1 held, 4 younger than 5 s\n");
    res_free(&r);
    ASSERT_INT_EQ(lease_files(), 5);
    /* A device planted under a key's name is no held lease. */
    ctl_key("/gc/planted", key);
    snprintf(path, sizeof(path), "%s/%s", space_dir(), key);
    ASSERT_OK(mknod(path, S_IFCHR | 0600, makedev(1, 3)) < 0 ? -errno : 0);
    CTL_EXPECT(&r, 0, "gc", "--min-age=0");
    ASSERT_STR_EQ(r.out,
                  "gc: removed 4 unused lease files, kept 1 held, 1 not lease file "
                  "(planted or unreadable)\n");
    /* Not a terminal: no progress. */
    ASSERT_STR_EQ(r.err, "");
    res_free(&r);
    ASSERT_INT_EQ(lease_files(), 2);
    ASSERT_OK(unlink(path) < 0 ? -errno : 0);
    ASSERT_INT_EQ(probe("/gc/3"), LOCKD_EXCLUSIVE);
    CTL_EXPECT(&r, 0, "gc", "--json");
    flat = json_flat(r.out);
    ASSERT_JSON(flat, ".removed", "0");
    ASSERT_JSON(flat, ".kept", "1");
    ASSERT_JSON(flat, ".held", "1");
    ASSERT_JSON(flat, ".young", "0");
    ASSERT_JSON(flat, ".other", "0");
    free(flat);
    res_free(&r);
    CTL_EXPECT(&r, 64, "gc", "--min-age=soon");
    assert_one_line_error(&r, "--min-age=soon: not a number of seconds");
    res_free(&r);
    ASSERT_INT_EQ(proc_finish(&p), 0);
    CTL_EXPECT(&r, 1, "--dir", test_path("nope"), "gc");
    assert_one_line_error(&r, "nope does not exist");
    res_free(&r);
}

/* A settings file run together, without its newlines, is refused, and the
 * message names the lockspace and the file; gc removes nothing there. */
static void
test_settings_run_together(void)
{
    char path[PATH_MAX + 32];
    struct res r;

    case_env();
    xmkdir(space_dir());
    snprintf(path, sizeof(path), "%s/.lockd-lockspace", space_dir());
    write_file(path, "lockd-lockspace1key-modecanonical");
    make_lease_files(1);
    CTL_EXPECT(&r, 1, "gc", "--min-age=0");
    assert_one_line_error(&r, ".lockd-lockspace is not a settings file");
    ASSERT_CONTAINS(r.err, space_dir());
    res_free(&r);
    ASSERT_INT_EQ(lease_files(), 1);
}

/* Whether buf has a line that starts with prefix and goes on with a rate,
 * "N/s" (N with a comma every three digits), then clears to the end. */
static int
progress_line(const char *buf, const char *prefix)
{
    const char *p = strstr(buf, prefix);
    size_t digits = 0;

    if (!p)
        return 0;
    for (p += strlen(prefix); isdigit((unsigned char)*p) || *p == ','; p++)
        digits += *p != ',';
    return digits > 0 && strncmp(p, "/s\033[K", 5) == 0;
}

/* On a terminal gc shows how far it got of how many, and how fast, then
 * its summary. */
static void
test_gc_progress_on_tty(void)
{
    char *argv[] = {ctl_path, "gc", "--min-age=0", NULL}, buf[65536];
    int master, slave, st;
    pid_t pid;

    case_env();
    make_lockspace(0);
    make_lease_files(2100);
    ASSERT_OK(openpty(&master, &slave, NULL, NULL, NULL) < 0 ? -errno : 0);
    fflush(NULL);
    pid = fork();
    if (pid == 0)
        child_exec(argv, -1, out_file("gc.out"), slave);
    close(slave);
    read_all(master, buf, sizeof(buf));
    close(master);
    st = test_wait(pid);
    ASSERT_INT_EQ(st, 0);
    /* "gc: done/total files, rate/s", the rate a number with commas. */
    ASSERT_TRUE(progress_line(buf, "\rgc: 1,024/2,100 files, "));
    ASSERT_TRUE(progress_line(buf, "\rgc: 2,048/2,100 files, "));
    {
        char *out = slurp("gc.out");

        ASSERT_STR_EQ(out, "gc: removed 2100 unused lease files, kept 0 held\n");
        free(out);
    }
}

/* ------------------------------------------------------------------------
 * list
 */

/* The index of the lease with key in a flattened `list --json`, or -1. */
static int
json_lease(const char *flat, const char *key)
{
    char path[64];
    const char *k;
    int i;

    for (i = 0;; i++) {
        snprintf(path, sizeof(path), ".leases[%d].key", i);
        k = json_get(flat, path);
        if (!k)
            return -1;
        if (strcmp(k, key) == 0)
            return i;
    }
}

/* The field of the lease of disk in a flattened `list --json`. */
static const char *
json_lease_field(const char *flat, const char *disk, const char *field)
{
    char key[LOCKD_KEY_SIZE], path[128];
    int i;

    ctl_key(disk, key);
    i = json_lease(flat, key);
    if (i < 0)
        TEST_FAIL("no lease of %s in:\n%s", disk, flat);
    snprintf(path, sizeof(path), ".leases[%d].%s", i, field);
    return json_get(flat, path);
}

/* The row of disk's lease file in `list`'s table, or NULL. */
static const char *
list_row_of(const char *out, const char *disk)
{
    char key[LOCKD_KEY_SIZE];

    ctl_key(disk, key);
    return strstr(out, key);
}

/* An empty lockspace lists nothing, and says so; operands are refused. */
static void
test_list_empty(void)
{
    struct res r;
    char *flat;

    case_env();
    make_lockspace(0);
    CTL_EXPECT(&r, 0, "list");
    ASSERT_STR_EQ(r.out, "0 lease files: 0 held, 0 free\n");
    ASSERT_STR_EQ(r.err, "");
    res_free(&r);
    CTL_EXPECT(&r, 0, "--json", "list");
    flat = json_flat(r.out);
    ASSERT_JSON(flat, ".leases#", "0");
    ASSERT_JSON(flat, ".total", "0");
    ASSERT_JSON(flat, ".lockspace", space_dir());
    free(flat);
    res_free(&r);
    CTL_EXPECT(&r, 64, "list", "a.img");
    assert_one_line_error(&r, "list: takes no arguments");
    res_free(&r);
    CTL_EXPECT(&r, 64, "list", "--held", "--free");
    assert_one_line_error(&r, "--held and --free exclude each other");
    res_free(&r);
    CTL_EXPECT(&r, 64, "who", "--held", "a.img");
    res_free(&r);
    CTL_EXPECT(&r, 1, "--dir", test_path("nope"), "list");
    assert_one_line_error(&r, "nope does not exist");
    res_free(&r);
}

/*
 * Without a helper: free, shared and exclusive lease files, held by other
 * processes (lockdctl run); the disk's name and the holder from the holder
 * records; --held and --free; --json.
 */
static void
test_list_states(void)
{
    char host[256], line[512], spid[16], *flat;
    const char *row;
    struct proc ex, sh;
    struct res r;

    case_env();
    make_lockspace(0);
    ASSERT_OK(sys(gethostname(host, sizeof(host))));
    make_lease_files(2); /* /gc/0, /gc/1: never held, no record */
    CTL_EXPECT(&r, 0, "run", "--create-ok", "/l/done", "--", "true");
    res_free(&r);
    hold(&ex, "/l/ex", "-n", "web1");
    hold(&sh, "/l/sh", "-s", NULL);
    snprintf(spid, sizeof(spid), "%d", (int)ex.pid);

    CTL_EXPECT(&r, 0, "list");
    ASSERT_TRUE(strncmp(r.out, "KEY ", 4) == 0);
    ASSERT_CONTAINS(r.out, "  STATE  ");
    ASSERT_INT_EQ(lines(r.out), 7); /* header, 5 files, totals */
    row = list_row_of(r.out, "/l/ex");
    ASSERT_TRUE(row != NULL);
    snprintf(line, sizeof(line), "  exclusive  /l/ex    web1 (pid %s) on host %s since ",
             spid, host);
    ASSERT_TRUE(strncmp(row + 64, line, strlen(line)) == 0);
    row = list_row_of(r.out, "/l/sh");
    ASSERT_TRUE(row && strncmp(row + 64, "  shared     -  ", 16) == 0);
    /* A free lease's record still names its disk, and nobody as holder. */
    row = list_row_of(r.out, "/l/done");
    ASSERT_TRUE(row && strncmp(row + 64, "  free       /l/done  -\n", 24) == 0);
    row = list_row_of(r.out, "/gc/0");
    ASSERT_TRUE(row && strncmp(row + 64, "  free       -        -\n", 24) == 0);
    ASSERT_CONTAINS(r.out, "\n5 lease files: 2 held, 3 free\n");
    ASSERT_STR_EQ(r.err, "");
    res_free(&r);

    CTL_EXPECT(&r, 0, "list", "--held");
    ASSERT_INT_EQ(lines(r.out), 4);
    ASSERT_TRUE(list_row_of(r.out, "/l/ex") && list_row_of(r.out, "/l/sh"));
    ASSERT_TRUE(!list_row_of(r.out, "/l/done") && !strstr(r.out, " free "));
    ASSERT_CONTAINS(r.out, "5 lease files: 2 held, 3 free\n");
    res_free(&r);
    CTL_EXPECT(&r, 0, "list", "--free");
    ASSERT_INT_EQ(lines(r.out), 5);
    ASSERT_TRUE(!list_row_of(r.out, "/l/ex") && !list_row_of(r.out, "/l/sh"));
    ASSERT_TRUE(list_row_of(r.out, "/gc/1") != NULL);
    res_free(&r);

    CTL_EXPECT(&r, 0, "list", "--json");
    flat = json_flat(r.out);
    ASSERT_JSON(flat, ".leases#", "5");
    ASSERT_JSON(flat, ".total", "5");
    ASSERT_JSON(flat, ".held", "2");
    ASSERT_JSON(flat, ".free", "3");
    ASSERT_JSON(flat, ".foreign", "0");
    ASSERT_STR_EQ(json_lease_field(flat, "/l/ex", "state"), "exclusive");
    ASSERT_STR_EQ(json_lease_field(flat, "/l/ex", "disk"), "/l/ex");
    ASSERT_STR_EQ(json_lease_field(flat, "/l/ex", "holders#"), "1");
    ASSERT_STR_EQ(json_lease_field(flat, "/l/ex", "holders[0].name"), "web1");
    ASSERT_STR_EQ(json_lease_field(flat, "/l/ex", "holders[0].pid"), spid);
    ASSERT_STR_EQ(json_lease_field(flat, "/l/ex", "holders[0].host"), host);
    ASSERT_STR_EQ(json_lease_field(flat, "/l/ex", "record.owner"), "web1");
    ASSERT_STR_EQ(json_lease_field(flat, "/l/sh", "state"), "shared");
    ASSERT_STR_EQ(json_lease_field(flat, "/l/done", "state"), "free");
    ASSERT_STR_EQ(json_lease_field(flat, "/l/done", "disk"), "/l/done");
    ASSERT_STR_EQ(json_lease_field(flat, "/l/done", "record"), "null");
    ASSERT_STR_EQ(json_lease_field(flat, "/gc/0", "disk"), "null");
    free(flat);
    res_free(&r);
    CTL_EXPECT(&r, 0, "list", "--json", "--held");
    flat = json_flat(r.out);
    ASSERT_JSON(flat, ".leases#", "2");
    free(flat);
    res_free(&r);

    ASSERT_INT_EQ(proc_finish(&ex), 0);
    ASSERT_INT_EQ(proc_finish(&sh), 0);
    CTL_EXPECT(&r, 0, "list");
    ASSERT_CONTAINS(r.out, "5 lease files: 0 held, 5 free\n");
    res_free(&r);
}

/*
 * Things planted under a lease's name (a FIFO, a symlink, a directory)
 * are listed as foreign, never opened; files that are not leases at all
 * are only counted; lockd's own files are neither.
 */
static void
test_list_planted(void)
{
    char key[LOCKD_KEY_SIZE], path[PATH_MAX + 80], *flat, *before;
    struct res r;

    case_env();
    make_lockspace(0);
    make_lease_files(1);
    ctl_key("/p/fifo", key);
    snprintf(path, sizeof(path), "%s/%s", space_dir(), key);
    ASSERT_OK(sys(mkfifo(path, 0600)));
    ctl_key("/p/link", key);
    snprintf(path, sizeof(path), "%s/%s", space_dir(), key);
    ASSERT_OK(sys(symlink(test_path("target"), path)));
    ctl_key("/p/dir", key);
    snprintf(path, sizeof(path), "%s/%s", space_dir(), key);
    ASSERT_OK(sys(mkdir(path, 0700)));
    snprintf(path, sizeof(path), "%s/notes.txt", space_dir());
    write_file(path, "not a lease\n");
    before = dir_listing(space_dir());

    CTL_EXPECT(&r, 0, "list");
    ASSERT_CONTAINS(r.out,
                    "1 lease file: 0 held, 1 free; 3 foreign files planted under a "
                    "lease's name; 1 other file left out\n");
    ASSERT_CONTAINS(list_row_of(r.out, "/p/fifo"), "  foreign  ");
    ASSERT_CONTAINS(list_row_of(r.out, "/p/link"), "a symlink is planted");
    ASSERT_CONTAINS(list_row_of(r.out, "/p/dir"), "a directory is planted");
    ASSERT_TRUE(!strstr(r.out, "notes.txt") && !strstr(r.out, ".lockd-"));
    res_free(&r);
    CTL_EXPECT(&r, 0, "list", "--json");
    flat = json_flat(r.out);
    ASSERT_JSON(flat, ".leases#", "4");
    ASSERT_JSON(flat, ".total", "1");
    ASSERT_JSON(flat, ".foreign", "3");
    ASSERT_JSON(flat, ".other", "1");
    ASSERT_STR_EQ(json_lease_field(flat, "/p/fifo", "state"), "foreign");
    ASSERT_TRUE(strstr(json_lease_field(flat, "/p/fifo", "error"), "FIFO") != NULL);
    free(flat);
    res_free(&r);
    /* --held and --free list neither. */
    CTL_EXPECT(&r, 0, "list", "--free");
    ASSERT_TRUE(!strstr(r.out, "  foreign  "));
    res_free(&r);
    /* Nothing was created, removed or followed (the link's target). */
    assert_listing(space_dir(), before);
    ASSERT_INT_EQ(access(test_path("target"), F_OK), -1);
    free(before);
}

/* With a helper: the owners it holds leases for, by name, pid and uuid,
 * with the disk it was handed; a name's control bytes never reach the
 * terminal. */
static void
test_list_with_helper(void)
{
    char spid[32], want[256], disk[PATH_MAX + 16], *flat;
    pid_t helper;
    struct proc p;
    struct res r;

    case_env();
    helper = helper_start();
    spawn(&p, "run", "--name", "guest\033a", "--uuid", UUID_A, "--shared", "a.img", "--",
          HOLD_CMD(0), (char *)NULL);
    ASSERT_STR_EQ(proc_line(&p), "ready");
    snprintf(spid, sizeof(spid), "%d", (int)p.pid);
    snprintf(disk, sizeof(disk), "%s/a.img", test_scratch);
    CTL_EXPECT(&r, 0, "list", "--held");
    snprintf(want, sizeof(want), "guest\\x1ba (pid %s, uuid " UUID_A ")\n", spid);
    ASSERT_CONTAINS(list_row_of(r.out, "a.img"), want);
    ASSERT_CONTAINS(list_row_of(r.out, "a.img"), disk);
    ASSERT_CONTAINS(list_row_of(r.out, "a.img"), "  shared  ");
    ASSERT_TRUE(!strchr(r.out, '\033'));
    ASSERT_CONTAINS(r.out, "1 lease file: 1 held, 0 free\n");
    res_free(&r);
    CTL_EXPECT(&r, 0, "--json", "list");
    flat = json_flat(r.out);
    ASSERT_STR_EQ(json_lease_field(flat, "a.img", "state"), "shared");
    ASSERT_STR_EQ(json_lease_field(flat, "a.img", "disk"), disk);
    ASSERT_STR_EQ(json_lease_field(flat, "a.img", "holders#"), "1");
    ASSERT_STR_EQ(json_lease_field(flat, "a.img", "holders[0].pid"), spid);
    ASSERT_STR_EQ(json_lease_field(flat, "a.img", "holders[0].uuid"), UUID_A);
    ASSERT_TRUE(strcmp(json_lease_field(flat, "a.img", "holders[0].id"), "null") != 0);
    free(flat);
    res_free(&r);
    ASSERT_INT_EQ(proc_finish(&p), 0);
    ASSERT_TRUE(WAIT_UNTIL(helper_leases() == 0, 5000));
    CTL_EXPECT(&r, 0, "list");
    ASSERT_CONTAINS(r.out, "1 lease file: 0 held, 1 free\n");
    res_free(&r);
    helper_stop(helper);
}

/* ------------------------------------------------------------------------
 * The helper: run, acquire, release, status, who
 */

static void
test_run_with_helper(void)
{
    char spid[32], disk[PATH_MAX + 256], *flat;
    pid_t helper;
    struct proc p;
    struct res r;

    case_env();
    helper = helper_start();
    spawn(&p, "run", "--name", "guest-a", "--uuid", UUID_A, "a.img", "b.img", "--",
          HOLD_CMD(4), (char *)NULL);
    ASSERT_STR_EQ(proc_line(&p), "ready");
    snprintf(spid, sizeof(spid), "%d", (int)p.pid);
    ASSERT_INT_EQ(helper_leases(), 2);
    ASSERT_INT_EQ(probe("a.img"), LOCKD_EXCLUSIVE);
    /* Busy names the holder the helper knows. */
    CTL_EXPECT(&r, 75, "run", "a.img", "--", "true");
    snprintf(disk, sizeof(disk),
             "%s/a.img: busy: held exclusively by guest-a (pid %s, uuid " UUID_A ")",
             test_scratch, spid);
    assert_one_line_error(&r, disk);
    res_free(&r);
    CTL_EXPECT(&r, 0, "who", "a.img");
    ASSERT_CONTAINS(r.out, spid);
    ASSERT_CONTAINS(r.out, "guest-a");
    ASSERT_CONTAINS(r.out, UUID_A);
    res_free(&r);
    CTL_EXPECT(&r, 0, "who", "--json", "a.img", "c.img");
    flat = json_flat(r.out);
    ASSERT_JSON(flat, ".disks[0].state", "exclusive");
    ASSERT_JSON(flat, ".disks[0].holders#", "1");
    ASSERT_JSON(flat, ".disks[0].holders[0].pid", spid);
    ASSERT_JSON(flat, ".disks[0].holders[0].name", "guest-a");
    ASSERT_JSON(flat, ".disks[0].holders[0].uuid", UUID_A);
    ASSERT_JSON(flat, ".disks[1].state", "free");
    ASSERT_JSON(flat, ".disks[1].holders#", "0");
    free(flat);
    res_free(&r);
    CTL_EXPECT(&r, 0, "status", "--json");
    flat = json_flat(r.out);
    ASSERT_JSON(flat, ".owners", "1");
    ASSERT_JSON(flat, ".leases", "2");
    ASSERT_JSON(flat, ".held#", "2");
    ASSERT_JSON(flat, ".held[0].pid", spid);
    ASSERT_JSON(flat, ".held[0].name", "guest-a");
    ASSERT_JSON(flat, ".held[0].mode", "exclusive");
    ASSERT_JSON(flat, ".held[1].uuid", UUID_A);
    ASSERT_TRUE(json_get(flat, ".held[0].id") && json_get(flat, ".held[0].key") &&
                json_get(flat, ".held[0].disk") && json_get(flat, ".held[0].uid") &&
                json_get(flat, ".stored"));
    free(flat);
    res_free(&r);
    /* CMD's exit ends the leases, and its status is run's. */
    ASSERT_INT_EQ(proc_finish(&p), 4);
    ASSERT_TRUE(WAIT_UNTIL(helper_leases() == 0, 5000));
    ASSERT_INT_EQ(probe("a.img"), LOCKD_FREE);
    ASSERT_INT_EQ(probe("b.img"), LOCKD_FREE);
    helper_stop(helper);
}

/* With a helper, the helper is the only holder: CMD got no lease fds. */
static void
test_run_with_helper_cmd_has_no_fds(void)
{
    pid_t helper;
    struct res r;

    case_env();
    helper = helper_start();
    /* CMD (find, exec'd by lockdctl) lists its fds that lead into the
     * lockspace: none with a helper, the lease without one. */
    CTL_EXPECT(&r, 0, "run", "a.img", "--", "find", "/proc/self/fd", "-lname", "*/ls/*");
    ASSERT_STR_EQ(r.out, "");
    res_free(&r);
    /* A CMD that cannot be run: its leases go at once, from the helper too. */
    CTL_EXPECT(&r, 127, "run", "a.img", "--", "/nonexistent/cmd");
    res_free(&r);
    ASSERT_INT_EQ(probe("a.img"), LOCKD_FREE);
    ASSERT_INT_EQ(helper_leases(), 0);
    helper_stop(helper);
    CTL_EXPECT(&r, 0, "run", "a.img", "--", "find", "/proc/self/fd", "-lname", "*/ls/*");
    ASSERT_INT_EQ(lines(r.out), 1);
    res_free(&r);
}

/* A script that runs one command after another on a disk: the helper
 * releases the first command's lease a moment after it exits, and the next
 * run must not be refused for it. */
static void
test_run_with_helper_back_to_back(void)
{
    pid_t helper;
    struct res r;
    int i;

    case_env();
    helper = helper_start();
    for (i = 0; i < 100; i++) {
        CTL_EXPECT(&r, 0, "run", "a.img", "--", "true");
        res_free(&r);
    }
    helper_stop(helper);
}

static void
test_acquire_release(void)
{
    char spid[32], *flat;
    pid_t helper, owner;
    struct res r;

    case_env();
    helper = helper_start();
    owner = sleeper();
    snprintf(spid, sizeof(spid), "%d", (int)owner);
    CTL_EXPECT(&r, 0, "acquire", "--pid", spid, "--name", "vm1", "--json", "a.img",
               "b.img", "c.img");
    flat = json_flat(r.out);
    ASSERT_JSON(flat, ".pid", spid);
    ASSERT_JSON(flat, ".leases#", "3");
    ASSERT_JSON(flat, ".leases[0].mode", "exclusive");
    ASSERT_TRUE(json_get(flat, ".leases[2].id") != NULL);
    free(flat);
    res_free(&r);
    /* lockdctl (the manager) is gone; the helper holds for the owner. */
    ASSERT_INT_EQ(probe("a.img"), LOCKD_EXCLUSIVE);
    ASSERT_INT_EQ(helper_leases(), 3);
    /* A disk the owner does not hold: an error, and nothing released. */
    CTL_EXPECT(&r, 1, "release", "--pid", spid, "a.img", "d.img");
    assert_one_line_error(&r, "d.img");
    res_free(&r);
    ASSERT_INT_EQ(helper_leases(), 3);
    CTL_EXPECT(&r, 0, "release", "--pid", spid, "a.img");
    res_free(&r);
    ASSERT_INT_EQ(probe("a.img"), LOCKD_FREE);
    ASSERT_INT_EQ(probe("b.img"), LOCKD_EXCLUSIVE);
    CTL_EXPECT(&r, 0, "release", "--pid", spid);
    res_free(&r);
    ASSERT_INT_EQ(probe("b.img"), LOCKD_FREE);
    ASSERT_INT_EQ(probe("c.img"), LOCKD_FREE);
    ASSERT_INT_EQ(helper_leases(), 0);
    /* Shared for two owners, then the owner's death releases. */
    CTL_EXPECT(&r, 0, "acquire", "--pid", spid, "--shared", "iso");
    res_free(&r);
    ASSERT_INT_EQ(probe("iso"), LOCKD_SHARED);
    CTL_EXPECT(&r, 75, "acquire", "--pid", spid, "iso", "a.img");
    ASSERT_CONTAINS(r.err, "iso: busy: held shared by");
    res_free(&r);
    ASSERT_INT_EQ(probe("a.img"), LOCKD_FREE);
    kill(owner, SIGKILL);
    test_wait(owner);
    ASSERT_TRUE(WAIT_UNTIL(probe("iso") == LOCKD_FREE, 5000));
    helper_stop(helper);
}

static void
test_acquire_bad_pid(void)
{
    pid_t helper, dead;
    char spid[32];
    struct res r;

    case_env();
    helper = helper_start();
    dead = sleeper();
    kill(dead, SIGKILL);
    test_wait(dead);
    snprintf(spid, sizeof(spid), "%d", (int)dead);
    CTL_EXPECT(&r, 1, "acquire", "--pid", spid, "a.img");
    assert_one_line_error(&r, "no such process");
    ASSERT_CONTAINS(r.err, spid);
    res_free(&r);
    ASSERT_INT_EQ(lease_files(), 0);
    ASSERT_INT_EQ(helper_leases(), 0);
    CTL_EXPECT(&r, 1, "release", "--pid", spid);
    assert_one_line_error(&r, spid);
    res_free(&r);
    helper_stop(helper);
}

/* status's table, against golden output (pids replaced, spaces squeezed). */
static void
test_status_golden(void)
{
    char spid_a[32], spid_b[32];
    pid_t helper, a, b;
    struct res r;

    case_env();
    helper = helper_start();
    CTL_EXPECT(&r, 0, "status");
    ASSERT_STR_EQ(r.out, "0 owners, 0 leases held, 0 in systemd's fd store\n");
    res_free(&r);
    a = sleeper();
    b = sleeper();
    snprintf(spid_a, sizeof(spid_a), "%d", (int)a);
    snprintf(spid_b, sizeof(spid_b), "%d", (int)b);
    CTL_EXPECT(&r, 0, "acquire", "--pid", spid_a, "--name", "guest-a", "--uuid", UUID_A,
               "--create-ok", "/var/lib/images/guest-a.qcow2",
               "/var/lib/images/guest-a-data.raw");
    res_free(&r);
    CTL_EXPECT(&r, 0, "acquire", "--pid", spid_b, "--name", "guest-b", "--uuid", UUID_B,
               "--shared", "--create-ok", "/srv/iso/debian-12.iso");
    res_free(&r);
    CTL_EXPECT(&r, 0, "status");
    r.out = replace(r.out, spid_a, "@A");
    r.out = replace(r.out, spid_b, "@B");
    squeeze(r.out);
    assert_golden("status.out", r.out);
    res_free(&r);
    kill(a, SIGKILL);
    kill(b, SIGKILL);
    test_wait(a);
    test_wait(b);
    helper_stop(helper);
}

/* A socket path that exists but refuses: 69, never a silent fallback. */
static void
test_helper_unreachable(void)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    char spid[32];
    struct res r;
    int fd;

    case_env();
    /* Bound, never listening: connect() is refused. */
    fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", test_path("h.sock"));
    ASSERT_OK(bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ? -errno : 0);
    snprintf(spid, sizeof(spid), "%d", (int)getpid());
    CTL_EXPECT(&r, 69, "run", "a.img", "--", "true");
    assert_one_line_error(&r, test_path("h.sock"));
    res_free(&r);
    ASSERT_INT_EQ(lease_files(), 0);
    CTL_EXPECT(&r, 69, "acquire", "--pid", spid, "a.img");
    assert_one_line_error(&r, "Connection refused");
    res_free(&r);
    CTL_EXPECT(&r, 69, "status");
    res_free(&r);
    CTL_EXPECT(&r, 69, "release", "--pid", spid);
    res_free(&r);
    /* who still tells the states, and says the helper did not answer (the
     * refused run created no lockspace for it to look in). */
    make_lockspace(0);
    CTL_EXPECT(&r, 69, "who", "a.img");
    ASSERT_CONTAINS(r.out, "free");
    ASSERT_CONTAINS(r.err, "Connection refused");
    res_free(&r);
    close(fd);
    /* No socket at all: run works without a helper; acquire cannot. */
    unlink(test_path("h.sock"));
    CTL_EXPECT(&r, 0, "run", "a.img", "--", "true");
    res_free(&r);
    CTL_EXPECT(&r, 69, "acquire", "--pid", spid, "a.img");
    assert_one_line_error(&r, "no helper at");
    res_free(&r);
    CTL_EXPECT(&r, 69, "status");
    res_free(&r);
    assert_nothing_held();
}

/* A socket path with something there that is no socket: run fails (69)
 * before it creates the lockspace, so a refused run leaves nothing behind. */
static void
test_run_refused_creates_nothing(void)
{
    struct res r;

    case_env();
    write_file(test_path("h.sock"), "");
    CTL_EXPECT(&r, 69, "run", "a.img", "--", "true");
    assert_one_line_error(&r, test_path("h.sock"));
    res_free(&r);
    ASSERT_TRUE(access(space_dir(), F_OK) < 0);
}

/* A disk whose probe fails (a directory planted where its lease belongs)
 * is one object with state "error": the document stays JSON. */
static void
test_who_json_probe_fails(void)
{
    char key[LOCKD_KEY_SIZE], path[PATH_MAX + LOCKD_KEY_SIZE], *flat;
    struct res r;

    case_env();
    make_lockspace(0);
    ctl_key("b.img", key);
    snprintf(path, sizeof(path), "%s/%s", space_dir(), key);
    ASSERT_OK(mkdir(path, 0700) < 0 ? -errno : 0);
    CTL_EXPECT(&r, 1, "who", "--json", "a.img", "b.img", "c.img");
    ASSERT_CONTAINS(r.err, "/b.img: a directory is planted");
    flat = json_flat(r.out);
    ASSERT_JSON(flat, ".disks#", "3");
    ASSERT_JSON(flat, ".disks[0].state", "free");
    ASSERT_JSON(flat, ".disks[1].key", key);
    ASSERT_JSON(flat, ".disks[1].state", "error");
    ASSERT_CONTAINS(json_get(flat, ".disks[1].error"), "directory is planted");
    ASSERT_JSON(flat, ".disks[1].holders#", "0");
    ASSERT_JSON(flat, ".disks[2].state", "free");
    free(flat);
    res_free(&r);
    /* The failing disk first: no stray comma either. */
    CTL_EXPECT(&r, 1, "who", "--json", "b.img", "a.img");
    flat = json_flat(r.out);
    ASSERT_JSON(flat, ".disks#", "2");
    ASSERT_JSON(flat, ".disks[0].state", "error");
    free(flat);
    res_free(&r);
}

/* With no --dir, LOCKD_DIR or HOME (and not root), only the commands that
 * open a lockspace miss one: the rest run, and usage errors stay 64. */
static void
test_no_lockspace_needed(void)
{
    char key[LOCKD_KEY_SIZE];
    struct res r;

    case_env();
    ctl_how(&r, CTL_NOBODY, "bogus", (char *)NULL);
    ASSERT_INT_EQ(r.status, 64);
    assert_one_line_error(&r, "unknown command 'bogus'");
    res_free(&r);
    ctl_how(&r, CTL_NOBODY, "key", (char *)NULL);
    ASSERT_INT_EQ(r.status, 64);
    res_free(&r);
    ctl_how(&r, CTL_NOBODY, "key", "--resource", "foo", (char *)NULL);
    ASSERT_INT_EQ(r.status, 0);
    ASSERT_OK(lockd_key_resource("foo", 3, key));
    ASSERT_TRUE(strncmp(r.out, key, LOCKD_KEY_SIZE - 1) == 0);
    res_free(&r);
    /* No helper socket to look for either: 69, never "no lockspace". */
    ctl_how(&r, CTL_NOBODY, "status", (char *)NULL);
    ASSERT_INT_EQ(r.status, 69);
    assert_one_line_error(&r, "no helper socket");
    res_free(&r);
    ctl_how(&r, CTL_NOBODY, "release", "--pid", "1", (char *)NULL);
    ASSERT_INT_EQ(r.status, 69);
    res_free(&r);
    /* Those that need a lockspace say so. */
    ctl_how(&r, CTL_NOBODY, "who", "x", (char *)NULL);
    ASSERT_INT_EQ(r.status, 1);
    assert_one_line_error(&r, "no lockspace");
    res_free(&r);
    ctl_how(&r, CTL_NOBODY, "run", "x", "--", "true", (char *)NULL);
    ASSERT_INT_EQ(r.status, 1);
    assert_one_line_error(&r, "no lockspace");
    res_free(&r);
    ctl_how(&r, CTL_NOBODY, "doctor", (char *)NULL);
    ASSERT_INT_EQ(r.status, 1);
    assert_one_line_error(&r, "no lockspace");
    res_free(&r);
}

/*
 * Without --wait, busy is busy even after the grace retry for a holder that
 * looks gone: the helper holds a.img for a live owner, which a lockdctl in
 * a pid namespace of its own cannot see, so it retries for the grace period
 * and then reports plain busy (never "still busy after (null) s").
 */
static void
test_busy_after_grace_retry(void)
{
    pid_t helper, owner;
    char spid[32];
    struct res r;

    case_env();
    helper = helper_start();
    owner = sleeper();
    snprintf(spid, sizeof(spid), "%d", (int)owner);
    CTL_EXPECT(&r, 0, "acquire", "--pid", spid, "--name", "vm1", "a.img");
    res_free(&r);
    ctl_how(&r, CTL_NEWPID, "run", "a.img", "--", "true", (char *)NULL);
    ASSERT_INT_EQ(r.status, 75);
    assert_one_line_error(&r, "/a.img: busy: held exclusively by vm1");
    ASSERT_TRUE(strstr(r.err, "(null)") == NULL);
    res_free(&r);
    ASSERT_INT_EQ(probe("a.img"), LOCKD_EXCLUSIVE);
    kill(owner, SIGKILL);
    test_wait(owner);
    helper_stop(helper);
}

/* ------------------------------------------------------------------------
 * doctor
 */

struct doc {
    struct res r;
    char *flat;
};

/* Run doctor as text and as JSON; expect st from both. */
static void
doctor(struct doc *d, int st)
{
    struct res j;

    CTL_EXPECT(&d->r, st, "doctor");
    CTL_EXPECT(&j, st, "doctor", "--json");
    d->flat = json_flat(j.out);
    ASSERT_JSON(d->flat, ".ok", st == 0 ? "true" : "false");
    ASSERT_JSON(d->flat, ".lockspace", space_dir());
    res_free(&j);
}

static void
doc_free(struct doc *d)
{
    res_free(&d->r);
    free(d->flat);
}

/* The level doctor gave the first line of check whose message has text. */
static void
assert_doc_line(const struct doc *d, const char *level, const char *check,
                const char *text)
{
    char prefix[64];
    const char *p = d->r.out;

    snprintf(prefix, sizeof(prefix), "%-8s %-10s ", level, check);
    for (; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL) {
        size_t l = strcspn(p, "\n");
        char line[4096];

        snprintf(line, sizeof(line), "%.*s", (int)l, p);
        if (strncmp(line, prefix, strlen(prefix)) == 0 && strstr(line, text))
            return;
    }
    TEST_FAIL("no \"%s\" line with \"%s\" in:\n%s", prefix, text, d->r.out);
}

static void
test_doctor_good(void)
{
    char *before;
    struct proc p;
    struct doc d;
    pid_t helper;

    case_env();
    make_lockspace(0);
    make_lease_files(3);
    hold(&p, "/gc/1", NULL, NULL);
    before = dir_listing(space_dir());
    doctor(&d, 0);
    ASSERT_TRUE(strncmp(d.r.out, "lockspace ", 10) == 0);
    assert_doc_line(&d, "ok", "directory", "exists and is writable");
    assert_doc_line(&d, "ok", "settings", "key mode verbatim");
    assert_doc_line(&d, "ok", "filesystem", "local");
    assert_doc_line(&d, "ok", "locks", "OFD locks work here");
    assert_doc_line(&d, "ok", "leases", "3 lease files: 1 held, 2 unused");
    assert_doc_line(&d, "note", "helper", "no helper at");
    assert_doc_line(&d, "ok", "fds", "open files");
    ASSERT_CONTAINS(d.r.out, "\nall is well\n");
    ASSERT_STR_EQ(d.r.err, "");
    ASSERT_JSON(d.flat, ".checks[0].check", "directory");
    ASSERT_JSON(d.flat, ".checks[0].level", "ok");
    ASSERT_TRUE(json_get(d.flat, ".checks[0].message") != NULL);
    doc_free(&d);
    /* It changed nothing: no settings, no index, no scratch file. */
    assert_listing(space_dir(), before);
    ASSERT_INT_EQ(proc_finish(&p), 0);
    /* With a helper answering: it verifies a probe lease here, whose file
     * is removed again (taking it made the lockspace's index, as any first
     * lease does). */
    helper = helper_start();
    doctor(&d, 0);
    assert_doc_line(&d, "ok", "helper", "lockd-helper answers at");
    assert_doc_line(&d, "ok", "helper", "the helper verified a probe lease here");
    doc_free(&d);
    ASSERT_OK(sys(unlink(test_path("ls/.lockd-index"))));
    assert_listing(space_dir(), before);
    /* A lockspace this user cannot create files in: said plainly. */
    ASSERT_OK(sys(chmod(space_dir(), 0555)));
    if (geteuid() != 0) {
        doctor(&d, 0);
        assert_doc_line(&d, "note", "helper", "cannot create a probe lease");
        doc_free(&d);
    }
    ASSERT_OK(sys(chmod(space_dir(), 0755)));
    helper_stop(helper);
    free(before);
}

static void
test_doctor_missing_and_unrecorded(void)
{
    struct doc d;

    case_env();
    doctor(&d, 1);
    assert_doc_line(&d, "error", "directory", "does not exist");
    ASSERT_CONTAINS(d.r.out, "1 error, 0 warnings");
    doc_free(&d);
    ASSERT_TRUE(access(space_dir(), F_OK) < 0);
    /* An empty directory: no settings yet is fine, and stays so. */
    ASSERT_OK(mkdir(space_dir(), 0755) < 0 ? -errno : 0);
    doctor(&d, 0);
    assert_doc_line(&d, "note", "settings", "no .lockd-lockspace yet");
    doc_free(&d);
    assert_listing(space_dir(), ".\n..\n");
    /* A settings file lockd does not understand. */
    write_file(test_path("ls/.lockd-lockspace"),
               "lockd-lockspace 99\nkey-mode verbatim\n");
    doctor(&d, 1);
    assert_doc_line(&d, "error", "settings", "not a settings file");
    doc_free(&d);
}

static void
test_doctor_read_only(void)
{
    struct doc d;

    case_env();
    make_lockspace(0);
    make_lease_files(1);
    /* A private mount namespace: the bind mount dies with this case. */
    ASSERT_OK(unshare(CLONE_NEWNS) < 0 ? -errno : 0);
    /* "none" where the type is ignored: valgrind objects to NULL there. */
    ASSERT_OK(mount("none", "/", "none", MS_REC | MS_PRIVATE, NULL) < 0 ? -errno : 0);
    ASSERT_OK(mount(space_dir(), space_dir(), "none", MS_BIND, NULL) < 0 ? -errno : 0);
    ASSERT_OK(
        sys(mount("none", space_dir(), "none", MS_REMOUNT | MS_BIND | MS_RDONLY, NULL)));
    doctor(&d, 1);
    assert_doc_line(&d, "error", "directory", "read-only filesystem");
    /* Locks still work there for reading (tested on the settings file). */
    assert_doc_line(&d, "ok", "locks", "the settings file");
    assert_doc_line(&d, "ok", "leases", "1 lease file: 0 held, 1 unused");
    doc_free(&d);
    ASSERT_OK(umount(space_dir()) < 0 ? -errno : 0);
}

static void
test_doctor_lock_fails(void)
{
    struct doc d;

    case_env();
    make_lockspace(0);
    setenv("LOCKD_TEST_LOCK_FAIL", "ENOLCK", 1);
    doctor(&d, 1);
    assert_doc_line(&d, "error", "locks", "OFD locks do not work here");
    assert_doc_line(&d, "error", "locks", "ENOLCK");
    ASSERT_JSON(d.flat, ".checks[3].check", "locks");
    ASSERT_JSON(d.flat, ".checks[3].level", "error");
    doc_free(&d);
    assert_listing(space_dir(), ".\n..\n.lockd-lockspace\n");
}

/* A fake mountinfo that puts the lockspace on a filesystem of type, from
 * source, with options opts (and another mount beside it). */
static void
fake_mount(const char *type, const char *source, const char *opts)
{
    char text[8192];

    snprintf(text, sizeof(text),
             "21 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
             "40 21 0:50 /export %s rw,relatime shared:7 - %s %s %s\n"
             "41 40 0:51 / /elsewhere rw - tmpfs tmpfs rw\n",
             test_scratch, type, source, opts);
    write_file(test_path("mountinfo"), text);
    setenv("LOCKD_TEST_MOUNTINFO", test_path("mountinfo"), 1);
}

/* The lockspace on NFS with options opts. */
static void
fake_nfs(const char *opts)
{
    fake_mount("nfs", "filer:/export", opts);
}

static void
test_doctor_nfs(void)
{
    struct doc d;

    case_env();
    make_lockspace(0);
    fake_nfs("rw,vers=3,hard,proto=tcp,local_lock=all,addr=10.0.0.1");
    doctor(&d, 1);
    assert_doc_line(&d, "warning", "filesystem", "local_lock=all");
    assert_doc_line(&d, "warning", "filesystem", "LOCKS ARE LOCAL TO THIS HOST");
    ASSERT_CONTAINS(d.r.out, "0 errors, 1 warning");
    doc_free(&d);
    fake_nfs("rw,vers=3,nolock,local_lock=all,addr=10.0.0.1");
    doctor(&d, 1);
    assert_doc_line(&d, "warning", "filesystem", "nolock");
    doc_free(&d);
    fake_nfs("rw,vers=3,local_lock=posix,addr=10.0.0.1");
    doctor(&d, 1);
    assert_doc_line(&d, "warning", "filesystem", "local_lock=posix");
    doc_free(&d);
    /* The healthy default. */
    fake_nfs("rw,vers=4.2,hard,proto=tcp,local_lock=none,addr=10.0.0.1");
    doctor(&d, 0);
    assert_doc_line(&d, "ok", "filesystem", "nfs from filer:/export");
    doc_free(&d);
}

/* OCFS2 keeps fcntl locks on the node with the o2cb stack or localflocks;
 * GlusterFS's needs cannot be seen from a client, so doctor says them. */
static void
test_doctor_cluster_filesystems(void)
{
    struct doc d;

    case_env();
    make_lockspace(0);
    write_file(test_path("stack"), "o2cb\n");
    setenv("LOCKD_TEST_OCFS2_STACK", test_path("stack"), 1);
    fake_mount("ocfs2", "/dev/sdb1", "rw,heartbeat=local");
    doctor(&d, 1);
    assert_doc_line(&d, "warning", "filesystem", "runs the o2cb cluster stack");
    assert_doc_line(&d, "warning", "filesystem", "LOCKS ARE LOCAL TO THIS HOST");
    doc_free(&d);
    write_file(test_path("stack"), "pcmk\n");
    doctor(&d, 0);
    assert_doc_line(&d, "ok", "filesystem", "ocfs2 from /dev/sdb1");
    doc_free(&d);
    fake_mount("ocfs2", "/dev/sdb1", "rw,localflocks");
    doctor(&d, 1);
    assert_doc_line(&d, "warning", "filesystem", "is mounted localflocks");
    doc_free(&d);
    setenv("LOCKD_TEST_OCFS2_STACK", test_path("no-such-file"), 1);
    fake_mount("ocfs2", "/dev/sdb1", "rw");
    doctor(&d, 1);
    assert_doc_line(&d, "warning", "filesystem", "cannot name");
    doc_free(&d);
    unsetenv("LOCKD_TEST_OCFS2_STACK");

    fake_mount("fuse.glusterfs", "gl1:/vmspace", "rw,user_id=0,group_id=0");
    doctor(&d, 0);
    assert_doc_line(&d, "ok", "filesystem", "locks go to the server");
    assert_doc_line(&d, "note", "filesystem", "GlusterFS volume gl1:/vmspace");
    assert_doc_line(&d, "note", "filesystem", "client.strict-locks on");
    assert_doc_line(&d, "note", "filesystem", "performance.stat-prefetch off");
    doc_free(&d);
}

static void
test_doctor_canonical_on_nfs(void)
{
    struct doc d;

    case_env();
    make_lockspace(LOCKD_OPEN_CANONICAL);
    fake_nfs("rw,vers=4.2,local_lock=none");
    doctor(&d, 1);
    assert_doc_line(&d, "warning", "settings",
                    "key mode canonical on a network filesystem");
    doc_free(&d);
    /* Asking for the other mode than recorded is an error. */
    unsetenv("LOCKD_TEST_MOUNTINFO");
    {
        struct res r;

        CTL_EXPECT(&r, 1, "--key-mode", "verbatim", "doctor");
        ASSERT_CONTAINS(r.out,
                        "records key mode canonical, but --key-mode asked for verbatim");
        res_free(&r);
    }
}

static void
test_doctor_helper_refuses(void)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    struct doc d;
    int fd;

    case_env();
    make_lockspace(0);
    fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", test_path("h.sock"));
    ASSERT_OK(bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ? -errno : 0);
    doctor(&d, 1);
    assert_doc_line(&d, "error", "helper", "is a stale socket: no helper answers there");
    doc_free(&d);
    close(fd);
    /* Not a socket at all: never called a stale one. */
    ASSERT_OK(sys(unlink(test_path("h.sock"))));
    write_file(test_path("h.sock"), "");
    doctor(&d, 1);
    assert_doc_line(&d, "error", "helper", "is not a socket, so no helper answers there");
    doc_free(&d);
}

/* Two paths for an operation as_nobody() runs. */
struct two_paths {
    const char *from, *to;
};

static int
op_rename(void *arg)
{
    const struct two_paths *t = arg;

    return rename(t->from, t->to) < 0 ? errno : 0;
}

static int
op_symlink(void *arg)
{
    const struct two_paths *t = arg;

    return symlink(t->from, t->to) < 0 ? errno : 0;
}

/* Run fn(arg) in a child as uid and gid 65534 (nobody); its errno, or 0. */
static int
as_nobody(int (*fn)(void *), void *arg)
{
    pid_t pid;

    fflush(NULL);
    pid = fork();
    if (pid < 0)
        TEST_FAIL("fork: %s", strerror(errno));
    if (pid == 0) {
        if (setgroups(0, NULL) < 0 || setgid(65534) < 0 || setuid(65534) < 0)
            _exit(122);
        _exit(fn(arg));
    }
    return test_wait(pid);
}

/*
 * The lockspace reached through an overlay mount (a real one, in a private
 * mount namespace): doctor calls it an error.  What for is shown too: a
 * lease taken through the overlay excludes a second one taken through it,
 * but not one taken in the lower directory, so one disk is granted twice.
 */
static void
test_doctor_overlay(void)
{
    char lower[PATH_MAX], opts[3 * PATH_MAX + 64], key[LOCKD_KEY_SIZE];
    lockd_lease *a = NULL, *b = NULL, *c = NULL;
    lockd_space *over = NULL, *under = NULL;
    struct doc d;

    case_env();
    snprintf(lower, sizeof(lower), "%s", test_path("lower"));
    xmkdir(lower);
    xmkdir(test_path("upper"));
    xmkdir(test_path("work"));
    xmkdir(space_dir());
    /* The lockspace, with disk's lease file, is in the lower directory. */
    key_of("disk", key);
    ASSERT_OK(lockd_space_open(lower, LOCKD_OPEN_CREATE, &under));
    ASSERT_OK(acquire1(under, key, LOCKD_EXCLUSIVE, LOCKD_TRY, &a));
    ASSERT_OK(lockd_lease_release(a));
    a = NULL;
    snprintf(opts, sizeof(opts), "lowerdir=%s,upperdir=%s,workdir=%s", lower,
             test_path("upper"), test_path("work"));
    ASSERT_OK(unshare(CLONE_NEWNS) < 0 ? -errno : 0);
    ASSERT_OK(mount("none", "/", "none", MS_REC | MS_PRIVATE, NULL) < 0 ? -errno : 0);
    ASSERT_OK(sys(mount("overlay", space_dir(), "overlay", 0, opts)));
    doctor(&d, 1);
    assert_doc_line(&d, "error", "filesystem", "reached through an overlay");
    assert_doc_line(&d, "error", "filesystem",
                    "one disk can be granted twice: put the lockspace on the lower/real "
                    "filesystem, not through an overlay");
    ASSERT_CONTAINS(d.r.out, "1 error, 0 warnings");
    doc_free(&d);

    ASSERT_OK(lockd_space_open(space_dir(), 0, &over));
    ASSERT_OK(acquire1(over, key, LOCKD_EXCLUSIVE, LOCKD_TRY, &a));
    ASSERT_ERR(acquire1(over, key, LOCKD_EXCLUSIVE, LOCKD_TRY, &c), EAGAIN);
    ASSERT_OK(acquire1(under, key, LOCKD_EXCLUSIVE, LOCKD_TRY, &b));
    ASSERT_OK(lockd_lease_release(b));
    ASSERT_OK(lockd_lease_release(a));
    lockd_space_close(over);
    lockd_space_close(under);
    ASSERT_OK(umount(space_dir()) < 0 ? -errno : 0);
}

/*
 * A lockspace owned by another user than root (as NFS root_squash leaves
 * it: nobody): a warning, with the fix, for the directory, its settings
 * file and its lease files.  What for is shown too: that user renames a
 * held lease away, and a second holder gets the disk.
 */
static void
test_doctor_foreign_owner(void)
{
    char key[LOCKD_KEY_SIZE], path[PATH_MAX + 80], moved[PATH_MAX + 80];
    struct two_paths t = {path, moved};
    lockd_lease *lease = NULL;
    lockd_space *space;
    struct doc d;

    case_env();
    make_lockspace(0);
    make_lease_files(2);
    ASSERT_OK(sys(chmod(test_scratch, 0711)));
    ASSERT_OK(sys(chown(space_dir(), 65534, 65534)));
    doctor(&d, 1);
    assert_doc_line(&d, "warning", "directory", "is owned by uid 65534, not root");
    assert_doc_line(&d, "warning", "directory",
                    "a second holder then gets the disk: chown root:root");
    ASSERT_CONTAINS(d.r.out, "0 errors, 1 warning\n");
    ASSERT_TRUE(strstr(d.r.out, "root_squash") == NULL);
    doc_free(&d);

    ctl_key("/gc/0", key);
    snprintf(path, sizeof(path), "%s/%s", space_dir(), key);
    snprintf(moved, sizeof(moved), "%s/moved", space_dir());
    space = space_open();
    ASSERT_OK(acquire1(space, key, LOCKD_EXCLUSIVE, LOCKD_TRY, &lease));
    ASSERT_INT_EQ(try_elsewhere(key, LOCKD_EXCLUSIVE), -EAGAIN);
    ASSERT_INT_EQ(as_nobody(op_rename, &t), 0);
    ASSERT_INT_EQ(try_elsewhere(key, LOCKD_EXCLUSIVE), 0);
    ASSERT_OK(lockd_lease_release(lease));
    lockd_space_close(space);
    ASSERT_OK(sys(rename(moved, path)));

    /* On NFS, where root_squash makes it so, the fix says that too. */
    fake_nfs("rw,vers=4.2,local_lock=none");
    doctor(&d, 1);
    assert_doc_line(&d, "warning", "directory", "NFS root_squash");
    doc_free(&d);
    unsetenv("LOCKD_TEST_MOUNTINFO");
    ASSERT_OK(sys(chown(space_dir(), 0, 0)));
    ASSERT_OK(sys(chown(test_path("ls/.lockd-lockspace"), 65534, 65534)));
    ASSERT_OK(sys(chown(path, 65534, 65534)));
    doctor(&d, 1);
    assert_doc_line(&d, "warning", "directory",
                    "/.lockd-lockspace is owned by uid 65534, not root: that user can "
                    "change the key mode");
    assert_doc_line(&d, "warning", "leases",
                    "1 lease file is owned by uid 65534, neither you nor root");
    ASSERT_CONTAINS(d.r.out, "0 errors, 2 warnings\n");
    doc_free(&d);
    ASSERT_OK(sys(chown(test_path("ls/.lockd-lockspace"), 0, 0)));
    ASSERT_OK(sys(chown(path, 0, 0)));
    doctor(&d, 0);
    assert_doc_line(&d, "ok", "directory", "exists and is writable");
    doc_free(&d);
}

/*
 * A lockspace anyone may write to, sticky (1777) or not: a warning with the
 * fix.  What for is shown too: nobody plants a symlink at a disk's key in
 * the sticky directory, and no lease of that disk can be taken.
 */
static void
test_doctor_world_writable(void)
{
    char key[LOCKD_KEY_SIZE], path[PATH_MAX + 80];
    struct two_paths t = {"/dev/null", path};
    struct doc d;
    struct res r;

    case_env();
    make_lockspace(0);
    ASSERT_OK(sys(chmod(test_scratch, 0711)));
    ASSERT_OK(sys(chmod(space_dir(), 01777)));
    doctor(&d, 1);
    assert_doc_line(&d, "warning", "directory", "is writable by everyone (mode 1777)");
    assert_doc_line(&d, "warning", "directory",
                    "any user can plant a file or symlink at a disk's key and block that "
                    "disk: chmod 0755");
    ASSERT_CONTAINS(d.r.out, "0 errors, 1 warning\n");
    doc_free(&d);

    ctl_key("/gc/0", key);
    snprintf(path, sizeof(path), "%s/%s", space_dir(), key);
    ASSERT_INT_EQ(as_nobody(op_symlink, &t), 0);
    CTL_EXPECT(&r, 1, "run", "--create-ok", "/gc/0", "--", "true");
    ASSERT_CONTAINS(r.err, "a symlink is planted");
    res_free(&r);
    ASSERT_OK(sys(unlink(path)));

    ASSERT_OK(sys(chmod(space_dir(), 0777)));
    doctor(&d, 1);
    assert_doc_line(&d, "warning", "directory",
                    "(mode 0777): any user can rename or remove a held lease, or plant");
    doc_free(&d);
    ASSERT_OK(sys(chmod(space_dir(), 0755)));
    doctor(&d, 0);
    doc_free(&d);
}

/*
 * doctor as another user than the lockspace's and the helper's: the lease
 * files it may not open are counted as such (never "0 lease files"), and a
 * helper behind a 0600 socket is running, not stale; only a socket nobody
 * listens on is.
 */
static void
test_doctor_as_nobody(void)
{
    char dir[PATH_MAX], sock[PATH_MAX];
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    struct res r;
    pid_t helper;
    int fd;

    case_env();
    snprintf(dir, sizeof(dir), "%s", space_dir());
    snprintf(sock, sizeof(sock), "%s", test_path("h.sock"));
    make_lockspace(0);
    make_lease_files(10);
    helper = helper_start();
    ctl_how(&r, CTL_NOBODY, "--dir", dir, "--socket", sock, "doctor", (char *)NULL);
    ASSERT_INT_EQ(r.status, 1); /* the directory is not writable for nobody */
    ASSERT_CONTAINS(r.out, "\nnote     leases     10 lease files (10 unreadable to you: "
                           "whether they are held is not known; run doctor as root)");
    ASSERT_CONTAINS(r.out, "\nnote     helper     a helper is running at");
    ASSERT_CONTAINS(r.out, "but you may not talk to it (socket mode 0600, owner uid 0): "
                           "run doctor as root");
    ASSERT_TRUE(strstr(r.out, "stale") == NULL);
    res_free(&r);
    helper_stop(helper);

    /* A socket file nobody listens on: stale for root; for nobody, who may
     * not connect to it, not known. */
    (void)unlink(sock);
    fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", test_path("h.sock"));
    ASSERT_OK(bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ? -errno : 0);
    ASSERT_OK(sys(chmod(sock, 0600)));
    ctl_how(&r, CTL_NOBODY, "--dir", dir, "--socket", sock, "doctor", (char *)NULL);
    ASSERT_CONTAINS(r.out, "\nnote     helper     you may not connect to");
    ASSERT_CONTAINS(r.out, "whether a helper answers there is not known");
    res_free(&r);
    CTL_EXPECT(&r, 1, "doctor");
    ASSERT_CONTAINS(r.out, "\nerror    helper     ");
    ASSERT_CONTAINS(r.out, "is a stale socket: no helper answers there");
    res_free(&r);
    close(fd);
}

/* ------------------------------------------------------------------------
 * main
 */

/* Paths of the built programs: the repository is the parent of the
 * directory this test lives in.  argv[0], not /proc/self/exe, which names
 * valgrind's tool under make check-valgrind. */
static void
find_programs(const char *argv0)
{
    char exe[PATH_MAX - 64], *slash;

    if (!realpath(argv0, exe) || !(slash = strrchr(exe, '/')))
        exit(2);
    *slash = '\0';
    slash = strrchr(exe, '/');
    if (!slash)
        exit(2);
    *slash = '\0';
    snprintf(ctl_path, sizeof(ctl_path), "%s/lockdctl", exe);
    snprintf(helper_path, sizeof(helper_path), "%s/lockd-helper", exe);
    snprintf(golden_dir, sizeof(golden_dir), "%s/test/golden", exe);
    /* To run these cases against other builds (an ASan lockdctl, say). */
    if (getenv("LOCKD_TEST_LOCKDCTL"))
        snprintf(ctl_path, sizeof(ctl_path), "%s", getenv("LOCKD_TEST_LOCKDCTL"));
    if (getenv("LOCKD_TEST_HELPER"))
        snprintf(helper_path, sizeof(helper_path), "%s", getenv("LOCKD_TEST_HELPER"));
}

/*
 * --key-mode lvm and scsi: a device without such a name (here /dev/null,
 * and a loop device: the machine has no LV and no SCSI disk) is refused in
 * one line saying so, for key without a lockspace and for run in one.
 */
static void
test_block_modes_cli(void)
{
    struct res r;

    case_env();
    ctl(&r, "key", "--key-mode", "scsi", "/dev/null", (char *)NULL);
    assert_one_line_error(&r, "/dev/null: has no SCSI name");
    ASSERT_INT_EQ(r.status, 1);
    res_free(&r);
    ctl(&r, "--key-mode", "lvm", "run", "/dev/null", "--", "true", (char *)NULL);
    assert_one_line_error(&r, "/dev/null: has no LVM name (not a block device spelled "
                              "/dev/VG/LV or /dev/mapper/VG-LV of an active LV)");
    ASSERT_INT_EQ(r.status, 1);
    res_free(&r);
    ctl(&r, "key", "--key-mode", "lvm2", "/dev/null", (char *)NULL);
    ASSERT_INT_EQ(r.status, 64);
    res_free(&r);
}

/*
 * --direct: run, acquire and who on the disks themselves (byte 0 of the
 * image, virtlockd's direct lease), with no lockspace: nothing is created
 * in one; a second run is busy (75); a device that is neither a regular
 * file nor a block device is refused in one line; --direct takes no
 * --resource names.
 */
static void
test_direct_cli(void)
{
    char img[PATH_MAX], cmd[5 * PATH_MAX];
    struct res r;
    int fd;

    case_env();
    snprintf(img, sizeof(img), "%s", test_path("d.img"));
    ASSERT_OK(sys(fd = open(img, O_CREAT | O_WRONLY | O_CLOEXEC, 0600)));
    close(fd);
    snprintf(cmd, sizeof(cmd),
             "%s run --direct %s -- true; echo inner=$?; %s who --direct --json %s",
             ctl_path, img, ctl_path, img);
    ctl(&r, "run", "--direct", "--name", "g1", img, "--", "/bin/sh", "-c", cmd,
        (char *)NULL);
    ASSERT_INT_EQ(r.status, 0);
    ASSERT_CONTAINS(r.out, "inner=75");
    ASSERT_CONTAINS(r.out, "\"state\":\"exclusive\"");
    ASSERT_CONTAINS(r.err, ": busy: held exclusively");
    res_free(&r);
    ASSERT_INT_EQ(access(space_dir(), F_OK), -1); /* no lockspace was made */
    ctl(&r, "who", "--direct", img, (char *)NULL);
    ASSERT_INT_EQ(r.status, 0);
    ASSERT_CONTAINS(r.out, "free");
    res_free(&r);
    ctl(&r, "run", "--direct", "/dev/null", "--", "true", (char *)NULL);
    assert_one_line_error(&r,
                          "/dev/null: cannot take its direct lease: neither a regular "
                          "file nor a block device");
    ASSERT_INT_EQ(r.status, 1);
    res_free(&r);
    ctl(&r, "who", "--direct", "--resource", "x", (char *)NULL);
    ASSERT_INT_EQ(r.status, 64);
    res_free(&r);
    ctl(&r, "status", "--direct", (char *)NULL);
    ASSERT_INT_EQ(r.status, 64);
    res_free(&r);
    ctl(&r, "doctor", "--direct", img, (char *)NULL);
    ASSERT_INT_EQ(r.status, 0);
    ASSERT_CONTAINS(r.out,
                    "is on a local filesystem: its direct lease excludes guests of "
                    "this host only");
    res_free(&r);
    ctl(&r, "doctor", "--direct", "/dev/null", (char *)NULL);
    ASSERT_INT_EQ(r.status, 1);
    ASSERT_CONTAINS(r.out, "/dev/null is neither a regular file nor a block device");
    res_free(&r);
}

/* ------------------------------------------------------------------------
 * Traps a newcomer fell into (issue 12)
 */

/* A mistyped disk is refused, before anything is created: the lease would
 * protect a name while the real image is not.  --create-ok takes it. */
static void
test_missing_disk(void)
{
    char dir[PATH_MAX + 32], spid[16];
    struct stat st;
    struct res r;
    pid_t owner;

    case_env();
    CTL_EXPECT(&r, 1, "run", "web1.qcwo2", "--", "true");
    assert_one_line_error(&r, "/web1.qcwo2: no such file (give --create-ok");
    res_free(&r);
    ASSERT_TRUE(stat(space_dir(), &st) < 0 && errno == ENOENT);
    /* A dangling symlink is no disk either. */
    ASSERT_OK(sys(symlink("gone.img", test_path("link.img"))));
    CTL_EXPECT(&r, 1, "run", "a.img", "link.img", "--", "true");
    assert_one_line_error(&r, "/link.img: no such file");
    res_free(&r);
    owner = sleeper();
    snprintf(spid, sizeof(spid), "%d", (int)owner);
    /* acquire needs no helper to refuse it. */
    CTL_EXPECT(&r, 1, "acquire", "--pid", spid, "new.img");
    assert_one_line_error(&r, "/new.img: no such file");
    res_free(&r);
    ASSERT_TRUE(stat(space_dir(), &st) < 0 && errno == ENOENT);
    CTL_EXPECT(&r, 0, "run", "--create-ok", "new.img", "--", "true");
    res_free(&r);
    /* A name that is no file needs no switch: --resource. */
    CTL_EXPECT(&r, 0, "run", "--resource", "rbd:pool/new", "--", "true");
    res_free(&r);
    /* A --dir whose parent is missing too is a typo until shown otherwise:
     * refused, nothing created; its last component alone is created. */
    snprintf(dir, sizeof(dir), "%s/lokcd/files", test_scratch);
    CTL_EXPECT(&r, 1, "--dir", dir, "run", "a.img", "--", "true");
    assert_one_line_error(&r, "no such directory, nor its parent");
    res_free(&r);
    ASSERT_TRUE(stat(test_path("lokcd"), &st) < 0 && errno == ENOENT);
    snprintf(dir, sizeof(dir), "%s/newspace", test_scratch);
    CTL_EXPECT(&r, 0, "--dir", dir, "run", "a.img", "--", "true");
    res_free(&r);
    ASSERT_OK(sys(stat(dir, &st)));
    kill(owner, SIGKILL);
    (void)test_wait(owner);
}

/* A second acquire for a guest that names no owner (a hot-plugged disk)
 * keeps the guest's name and uuid, in the helper and in the new lease's
 * holder record. */
static void
test_acquire_keeps_identity(void)
{
    char spid[16], *flat;
    pid_t helper, owner;
    struct res r;

    case_env();
    helper = helper_start();
    owner = sleeper();
    snprintf(spid, sizeof(spid), "%d", (int)owner);
    CTL_EXPECT(&r, 0, "acquire", "--pid", spid, "--name", "web1", "--uuid", UUID_A,
               "a.img");
    res_free(&r);
    CTL_EXPECT(&r, 0, "acquire", "--pid", spid, "b.img");
    res_free(&r);
    CTL_EXPECT(&r, 0, "status", "--json");
    flat = json_flat(r.out);
    ASSERT_JSON(flat, ".held#", "2");
    ASSERT_JSON(flat, ".held[1].name", "web1");
    ASSERT_JSON(flat, ".held[1].uuid", UUID_A);
    free(flat);
    res_free(&r);
    /* The record says it without the helper. */
    CTL_EXPECT(&r, 0, "--socket", test_path("none.sock"), "who", "--json", "b.img");
    flat = json_flat(r.out);
    ASSERT_JSON(flat, ".disks[0].record.owner", "web1");
    ASSERT_JSON(flat, ".disks[0].record.uuid", UUID_A);
    free(flat);
    res_free(&r);
    /* Release all: the owner is still registered, but holds nothing, and
     * the totals say so instead of counting it as a guest protected. */
    CTL_EXPECT(&r, 0, "release", "--pid", spid);
    res_free(&r);
    CTL_EXPECT(&r, 0, "status");
    ASSERT_CONTAINS(r.out, "0 owners, 0 leases held, 0 in systemd's fd store (and 1 "
                           "registered owner holding none)\n");
    res_free(&r);
    CTL_EXPECT(&r, 0, "status", "--json");
    flat = json_flat(r.out);
    ASSERT_JSON(flat, ".owners", "0");
    ASSERT_JSON(flat, ".idle_owners", "1");
    free(flat);
    res_free(&r);
    CTL_EXPECT(&r, 0, "acquire", "--pid", spid, "c.img");
    res_free(&r);
    CTL_EXPECT(&r, 0, "status");
    ASSERT_CONTAINS(r.out, "\n1 owner, 1 lease held, 0 in systemd's fd store\n");
    res_free(&r);
    kill(owner, SIGKILL);
    (void)test_wait(owner);
    helper_stop(helper);
}

/* who --test: flock(1)'s answer for scripts, nothing printed. */
static void
test_who_test_mode(void)
{
    struct proc p;
    struct res r;

    case_env();
    make_lockspace(0);
    CTL_EXPECT(&r, 0, "who", "--test", "a.img");
    ASSERT_STR_EQ(r.out, "");
    ASSERT_STR_EQ(r.err, "");
    res_free(&r);
    hold(&p, "a.img", "--shared", NULL);
    CTL_EXPECT(&r, 75, "who", "--test", "b.img", "a.img");
    ASSERT_STR_EQ(r.out, "");
    ASSERT_STR_EQ(r.err, "");
    res_free(&r);
    CTL_EXPECT(&r, 0, "who", "--test", "b.img");
    res_free(&r);
    CTL_EXPECT(&r, 3, "who", "--test", "-E", "3", "a.img");
    res_free(&r);
    /* Without --test, who answers 0 either way: it reports. */
    CTL_EXPECT(&r, 0, "who", "a.img");
    res_free(&r);
    ASSERT_INT_EQ(proc_finish(&p), 0);
    CTL_EXPECT(&r, 0, "who", "--test", "a.img");
    res_free(&r);
}

/* Whether s is valid UTF-8 (RFC 3629). */
static int
utf8_valid(const char *s)
{
    const unsigned char *p = (const unsigned char *)s;

    while (*p) {
        uint32_t c;
        int n, i;

        if (*p < 0x80) {
            p++;
            continue;
        }
        n = *p >= 0xc2 && *p <= 0xdf ? 2 : *p >= 0xe0 && *p <= 0xef ? 3
                                       : *p >= 0xf0 && *p <= 0xf4 ? 4 : 0;
        if (!n)
            return 0;
        c = *p & (0xffu >> (n + 1));
        for (i = 1; i < n; i++) {
            if ((p[i] & 0xc0) != 0x80)
                return 0;
            c = c << 6 | (p[i] & 0x3fu);
        }
        if ((n == 3 && c < 0x800) || (n == 4 && (c < 0x10000 || c > 0x10ffff)) ||
            (c >= 0xd800 && c <= 0xdfff))
            return 0;
        p += n;
    }
    return 1;
}

/* Names from other users reach root's terminal and scripts escaped: no
 * control byte on a terminal, valid UTF-8 in JSON, one line per message. */
static void
test_names_escaped(void)
{
    static const char evil[] = "vm\n66666 fake\x1b[2J\xff\xfe\xc2\x9b" "1;1H\xc3\xa9";
    char spid[16];
    pid_t helper, owner;
    struct res r;

    case_env();
    helper = helper_start();
    owner = sleeper();
    snprintf(spid, sizeof(spid), "%d", (int)owner);
    CTL_EXPECT(&r, 0, "acquire", "--pid", spid, "--name", evil, "a.img");
    res_free(&r);
    CTL_EXPECT(&r, 0, "status", "--json");
    ASSERT_TRUE(utf8_valid(r.out));
    free(json_flat(r.out));
    ASSERT_CONTAINS(r.out,
                    "\"vm\\n66666 fake\\u001b[2J\\ufffd\\ufffd\\u009b1;1H\xc3\xa9\"");
    res_free(&r);
    CTL_EXPECT(&r, 0, "who", "--json", "a.img");
    ASSERT_TRUE(utf8_valid(r.out));
    free(json_flat(r.out));
    res_free(&r);
    /* On a terminal: every byte of a control character or of no character
     * as \xHH; a printable character (é) as itself. */
    CTL_EXPECT(&r, 0, "who", "a.img");
    ASSERT_CONTAINS(r.out, "vm\\x0a66666 fake\\x1b[2J\\xff\\xfe\\xc2\\x9b1;1H\xc3\xa9");
    ASSERT_INT_EQ(lines(r.out), 2);
    res_free(&r);
    /* In a message: the busy line names the holder in one line. */
    CTL_EXPECT(&r, 75, "run", "a.img", "--", "true");
    assert_one_line_error(&r, "held exclusively by vm\\x0a66666 fake\\x1b[2J");
    ASSERT_TRUE(!strchr(r.err, '\x1b'));
    res_free(&r);
    /* A resource string with a newline does not forge a line of key. */
    CTL_EXPECT(&r, 0, "key", "--resource", "pool/a\n0123456789abcdef  /etc/passwd");
    ASSERT_INT_EQ(lines(r.out), 1);
    ASSERT_CONTAINS(r.out, "  pool/a\\x0a0123456789abcdef  /etc/passwd\n");
    res_free(&r);
    /* The helper's log escapes it too, C1 controls included. */
    {
        char *log = slurp("helper.log");

        ASSERT_TRUE(!strchr(log, '\x1b') && !strstr(log, "\xc2\x9b"));
        ASSERT_CONTAINS(log, "\\xc2\\x9b");
        free(log);
    }
    /* A disk name in an error message. */
    CTL_EXPECT(&r, 1, "run", "x\x1b]0;owned\x07.img", "--", "true");
    assert_one_line_error(&r, "/x\\x1b]0;owned\\x07.img: no such file");
    res_free(&r);
    kill(owner, SIGKILL);
    (void)test_wait(owner);
    helper_stop(helper);
}

/* A --json command that fails prints a JSON error object, so a script that
 * reads stdout always gets one document. */
static void
test_json_errors(void)
{
    pid_t helper, owner;
    char spid[16], *flat;
    struct proc p;
    struct res r;

    case_env();
    /* No lockspace yet. */
    CTL_EXPECT(&r, 1, "who", "--json", "a.img");
    flat = json_flat(r.out);
    ASSERT_CONTAINS(json_get(flat, ".error.message"), "does not exist");
    ASSERT_JSON(flat, ".error.exit", "1");
    free(flat);
    res_free(&r);
    /* No helper: 69. */
    CTL_EXPECT(&r, 69, "status", "--json");
    flat = json_flat(r.out);
    ASSERT_CONTAINS(json_get(flat, ".error.message"), "no helper at");
    ASSERT_JSON(flat, ".error.exit", "69");
    free(flat);
    res_free(&r);
    /* A usage error, with --json before the command or after it. */
    CTL_EXPECT(&r, 64, "--json", "frob");
    flat = json_flat(r.out);
    ASSERT_JSON(flat, ".error.exit", "64");
    free(flat);
    res_free(&r);
    CTL_EXPECT(&r, 64, "key", "--json");
    flat = json_flat(r.out);
    ASSERT_CONTAINS(json_get(flat, ".error.message"), "key: no disk");
    free(flat);
    res_free(&r);
    /* --json on a command that prints no JSON is a usage error. */
    CTL_EXPECT(&r, 64, "run", "-J", "a.img", "--", "true");
    flat = json_flat(r.out);
    ASSERT_CONTAINS(json_get(flat, ".error.message"), "--json does not apply to run");
    free(flat);
    res_free(&r);
    CTL_EXPECT(&r, 64, "--json", "release", "--pid", "1");
    free(json_flat(r.out));
    res_free(&r);
    /* Busy: 75, and the message names the holder. */
    helper = helper_start();
    owner = sleeper();
    snprintf(spid, sizeof(spid), "%d", (int)owner);
    hold(&p, "a.img", "--name", "web1");
    CTL_EXPECT(&r, 75, "acquire", "--json", "--pid", spid, "a.img");
    flat = json_flat(r.out);
    ASSERT_JSON(flat, ".error.exit", "75");
    ASSERT_CONTAINS(json_get(flat, ".error.message"), "busy: held exclusively by web1");
    free(flat);
    res_free(&r);
    /* who --test prints nothing, so --json has nothing to say. */
    CTL_EXPECT(&r, 64, "who", "--test", "--json", "a.img");
    flat = json_flat(r.out);
    ASSERT_CONTAINS(json_get(flat, ".error.message"), "takes no --json");
    free(flat);
    res_free(&r);
    /* An option getopt refuses before it reaches --json. */
    CTL_EXPECT(&r, 64, "list", "--bogus", "--json");
    flat = json_flat(r.out);
    ASSERT_JSON(flat, ".error.exit", "64");
    free(flat);
    res_free(&r);
    ASSERT_INT_EQ(proc_finish(&p), 0);
    kill(owner, SIGKILL);
    (void)test_wait(owner);
    helper_stop(helper);
}

/* The helper is unreachable (69), with a hint, whatever is in the way. */
static void
test_helper_unreachable_kinds(void)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    char longpath[200], *e;
    char *argv[] = {ctl_path, "--socket", (char *)test_path("full.sock"), "status", NULL};
    int fd, lfd, cfd;
    struct res r;
    pid_t pid;

    case_env();
    /* A full listen queue (a helper that hangs): connect() waits for the
     * library's 30 s, then EAGAIN.  Started first, checked last. */
    lfd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    cfd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", test_path("full.sock"));
    ASSERT_OK(sys(bind(lfd, (struct sockaddr *)&sa, sizeof(sa))));
    ASSERT_OK(sys(listen(lfd, 0)));
    ASSERT_OK(sys(connect(cfd, (struct sockaddr *)&sa, sizeof(sa)))); /* the queue's one */
    fflush(NULL);
    pid = fork();
    if (pid < 0)
        TEST_FAIL("fork: %s", strerror(errno));
    if (pid == 0)
        child_exec(argv, -1, -1, out_file("full.err"));
    /* A stream socket where the helper's should be. */
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", test_path("h.sock"));
    ASSERT_OK(sys(bind(fd, (struct sockaddr *)&sa, sizeof(sa))));
    ASSERT_OK(sys(listen(fd, 1)));
    CTL_EXPECT(&r, 69, "status");
    assert_one_line_error(&r, "a stream socket is there, not lockd-helper's");
    res_free(&r);
    CTL_EXPECT(&r, 69, "run", "a.img", "--", "true");
    res_free(&r);
    close(fd);
    /* A path longer than a socket address. */
    memset(longpath, 'x', sizeof(longpath) - 1);
    longpath[0] = '/';
    longpath[sizeof(longpath) - 1] = '\0';
    CTL_EXPECT(&r, 69, "--socket", longpath, "status");
    assert_one_line_error(&r, "longer than a UNIX socket address holds");
    res_free(&r);
    ASSERT_INT_EQ(test_wait(pid), 69);
    e = slurp("full.err");
    ASSERT_CONTAINS(e, "is not accepting connections (its listen queue is full");
    free(e);
    close(cfd);
    close(lfd);
}

/* "-w DISK" waits for DISK, as --wait would; "-w 5" is five seconds. */
static void
test_wait_short_option(void)
{
    struct res r;

    case_env();
    CTL_EXPECT(&r, 0, "run", "-w", "a.img", "--", "true");
    ASSERT_STR_EQ(r.err, "");
    res_free(&r);
    CTL_EXPECT(&r, 0, "run", "-w", "5", "a.img", "--", "true");
    res_free(&r);
    CTL_EXPECT(&r, 0, "run", "-w5", "a.img", "--", "true");
    res_free(&r);
    CTL_EXPECT(&r, 0, "run", "-w", "./a.img", "--", "true");
    res_free(&r);
    /* Not a number of seconds: a disk (that does not exist). */
    CTL_EXPECT(&r, 1, "run", "-w", "1x", "a.img", "--", "true");
    assert_one_line_error(&r, "/1x: no such file");
    res_free(&r);
    /* Another option's argument is left alone: an owner named "-w". */
    CTL_EXPECT(&r, 75, "run", "--name", "-w", "a.img", "--", "sh", "-c",
               "exec \"$0\" run a.img -- true", ctl_path);
    ASSERT_CONTAINS(r.err, "busy: held exclusively by -w (pid");
    res_free(&r);
}

/* The pid of the process named by "left pid N" in text, or 0. */
static pid_t
left_pid(const char *text)
{
    const char *p = strstr(text, "left pid ");

    return p ? (pid_t)atoi(p + 9) : 0;
}

/* lockdctl run DISK -- sh -c SCRIPT; its exit status, and its stderr read
 * until every process that has it closes it: run's check of a CMD that
 * daemonizes writes after CMD has exited. */
static int
run_sh(const char *disk, const char *script, char *err, size_t size)
{
    char *argv[] = {ctl_path, "run", (char *)disk,   "--",
                    "sh",     "-c",  (char *)script, NULL};
    int pfd[2], st;
    pid_t pid;

    ASSERT_OK(sys(pipe2(pfd, O_CLOEXEC)));
    fflush(NULL);
    pid = fork();
    if (pid < 0)
        TEST_FAIL("fork: %s", strerror(errno));
    if (pid == 0)
        child_exec(argv, -1, -1, pfd[1]);
    close(pfd[1]);
    read_all(pfd[0], err, size);
    close(pfd[0]);
    st = test_wait(pid);
    return st;
}

/*
 * run with a helper: the leases belong to CMD's process, so a CMD that
 * daemonizes loses them when it exits.  run says so, naming the process
 * left running; without a helper that process inherited the fds and holds
 * the lease.
 */
static void
test_run_daemonizes(void)
{
    char err[4096];
    pid_t helper, orphan;
    struct res r;

    case_env();
    helper = helper_start();
    ASSERT_INT_EQ(run_sh("a.img", "sleep 60 </dev/null >/dev/null 2>&1 & exit 0", err,
                         sizeof(err)),
                  0);
    orphan = left_pid(err);
    ASSERT_TRUE(orphan > 0);
    ASSERT_CONTAINS(err, ") running: its leases ended with pid");
    ASSERT_CONTAINS(err, "lockdctl acquire --pid");
    ASSERT_INT_EQ(lines(err), 1);
    ASSERT_TRUE(WAIT_UNTIL(helper_leases() == 0, 5000));
    ASSERT_INT_EQ(probe("a.img"), LOCKD_FREE);
    kill(orphan, SIGKILL);
    /* A CMD that leaves nothing behind: not a word; nor one whose child
     * is only passing through. */
    ASSERT_INT_EQ(run_sh("a.img", "sleep 0 & wait", err, sizeof(err)), 0);
    ASSERT_STR_EQ(err, "");
    ASSERT_INT_EQ(run_sh("a.img", "sleep 0.01 </dev/null >/dev/null 2>&1 & exit 0", err,
                         sizeof(err)),
                  0);
    ASSERT_STR_EQ(err, "");
    /* The name of the process left running is its own to choose: escaped. */
    {
        char prog[PATH_MAX + 64], script[PATH_MAX + 128];

        snprintf(prog, sizeof(prog), "%s/\x1b[31mX\x07", test_scratch);
        ASSERT_OK(sys(symlink("/bin/sleep", prog)));
        snprintf(script, sizeof(script), "\"%s\" 60 </dev/null >/dev/null 2>&1 & exit 0",
                 prog);
        ASSERT_INT_EQ(run_sh("a.img", script, err, sizeof(err)), 0);
        orphan = left_pid(err);
        ASSERT_TRUE(orphan > 0);
        kill(orphan, SIGKILL);
        ASSERT_CONTAINS(err, "(\\x1b[31mX\\x07) running");
        ASSERT_TRUE(!strchr(err, '\x1b') && !strchr(err, '\x07'));
    }
    helper_stop(helper);
    /* No helper: the child holds the lease fds it inherited. */
    CTL_EXPECT(&r, 0, "run", "a.img", "--", "sh", "-c",
               "sleep 60 </dev/null >/dev/null 2>&1 & echo $!");
    orphan = (pid_t)atoi(r.out);
    ASSERT_TRUE(orphan > 0);
    ASSERT_STR_EQ(r.err, "");
    res_free(&r);
    ASSERT_INT_EQ(probe("a.img"), LOCKD_EXCLUSIVE);
    kill(orphan, SIGKILL);
    ASSERT_TRUE(WAIT_UNTIL(probe("a.img") == LOCKD_FREE, 5000));
}

/* lockd-helper's command line agrees with lockdctl's (-S is the socket in
 * both), and its "<N>" priority prefixes, for journald, stay off a
 * terminal. */
static void
test_helper_cli(void)
{
    char *argv[] = {helper_path, "-S", (char *)test_path("h.sock"), "-t", "1", NULL};
    char *bad[] = {helper_path, "-s", (char *)test_path("h.sock"), NULL};
    char buf[4096];
    int master, slave;
    pid_t pid;

    case_env();
    fflush(NULL);
    pid = fork();
    if (pid == 0)
        child_exec(bad, -1, -1, out_file("bad.err"));
    ASSERT_INT_EQ(test_wait(pid), 64);
    {
        char *e = slurp("bad.err");

        ASSERT_CONTAINS(e, "the socket is -S or --socket, as in lockdctl");
        free(e);
    }
    /* -S was --fd-store-max once: a number is refused, not made a socket. */
    bad[1] = "-S";
    bad[2] = "8";
    fflush(NULL);
    pid = fork();
    if (pid == 0)
        child_exec(bad, -1, -1, out_file("bad.err"));
    ASSERT_INT_EQ(test_wait(pid), 64);
    {
        char *e = slurp("bad.err");

        ASSERT_CONTAINS(e, "-S 8: -S is the socket now");
        free(e);
    }
    ASSERT_OK(sys(openpty(&master, &slave, NULL, NULL, NULL)));
    fflush(NULL);
    pid = fork();
    if (pid == 0)
        child_exec(argv, -1, -1, slave);
    close(slave);
    /* -t 1: it exits after a second with nothing held; read until then. */
    read_all(master, buf, sizeof(buf));
    close(master);
    ASSERT_INT_EQ(test_wait(pid), 0);
    ASSERT_CONTAINS(buf, "ready: 0 owners, 0 leases");
    ASSERT_TRUE(!strstr(buf, "<6>") && !strchr(buf, '<'));
}

int
main(int argc, char **argv)
{
    (void)argc;
    find_programs(argv[0]);
    if (access(ctl_path, X_OK) < 0) {
        printf("not ok - %s is not built (make lockdctl)\n", ctl_path);
        return 1;
    }
    TEST_RUN(test_key_golden);
    TEST_RUN(test_key_relative_paths);
    TEST_RUN(test_spelling_warnings);
    TEST_RUN(test_relative_env_refused);
    TEST_RUN(test_run_index_held);
    TEST_RUN(test_stop_helper);
    TEST_RUN(test_status_scrubs_names);
    TEST_RUN(test_key_canonical_new_disk);
    TEST_RUN(test_key_mode_mismatch);
    TEST_RUN(test_key_unrecorded_lockspace);
    TEST_RUN(test_help_version);
    TEST_RUN(test_usage_errors);
    TEST_RUN(test_run_returns_cmd_status);
    TEST_RUN(test_run_holds_while_cmd_runs);
    TEST_RUN(test_run_watcher_acts);
    TEST_RUN(test_run_shared);
    TEST_RUN(test_wait_times_out);
    TEST_RUN(test_wait_succeeds_when_holder_exits);
    TEST_RUN(test_resource);
    TEST_RUN(test_who);
    TEST_RUN(test_who_posix_holder);
    TEST_RUN(test_gc_summary);
    TEST_RUN(test_settings_run_together);
    TEST_RUN(test_gc_progress_on_tty);
    TEST_RUN(test_list_empty);
    TEST_RUN(test_list_states);
    TEST_RUN(test_list_planted);
    TEST_RUN(test_list_with_helper);
    TEST_RUN(test_run_with_helper);
    TEST_RUN(test_run_with_helper_cmd_has_no_fds);
    TEST_RUN(test_run_with_helper_back_to_back);
    TEST_RUN(test_acquire_release);
    TEST_RUN(test_acquire_bad_pid);
    TEST_RUN(test_status_golden);
    TEST_RUN(test_helper_unreachable);
    TEST_RUN(test_run_refused_creates_nothing);
    TEST_RUN(test_who_json_probe_fails);
    TEST_RUN(test_no_lockspace_needed);
    TEST_RUN(test_busy_after_grace_retry);
    TEST_RUN(test_doctor_good);
    TEST_RUN(test_doctor_missing_and_unrecorded);
    TEST_RUN(test_doctor_read_only);
    TEST_RUN(test_doctor_lock_fails);
    TEST_RUN(test_doctor_nfs);
    TEST_RUN(test_doctor_canonical_on_nfs);
    TEST_RUN(test_doctor_cluster_filesystems);
    TEST_RUN(test_doctor_helper_refuses);
    TEST_RUN(test_doctor_overlay);
    TEST_RUN(test_doctor_foreign_owner);
    TEST_RUN(test_doctor_world_writable);
    TEST_RUN(test_doctor_as_nobody);
    TEST_RUN(test_direct_cli);
    TEST_RUN(test_missing_disk);
    TEST_RUN(test_acquire_keeps_identity);
    TEST_RUN(test_who_test_mode);
    TEST_RUN(test_names_escaped);
    TEST_RUN(test_json_errors);
    TEST_RUN(test_helper_unreachable_kinds);
    TEST_RUN(test_wait_short_option);
    TEST_RUN(test_run_daemonizes);
    TEST_RUN(test_helper_cli);
    TEST_RUN(test_block_modes_cli);
    return test_done();
}
