/* SPDX-License-Identifier: MIT */
/*
 * fake-libvirt: drive the lock-driver plugin through its ABI exactly as
 * libvirt 9.0.0 does (see the notes at the top of lockd-libvirt.c), with a
 * real lockd-helper and real guest processes, but without libvirtd.  It covers
 * what the end-to-end run cannot reach cheaply: configuration errors, a
 * release that names one disk, <lease> elements, shared leases, the key-mode
 * check, auto_disk_leases = 0.
 *
 * usage: fake-libvirt PLUGIN.so LOCKD-HELPER SYSFS-TREES (test/sysfs)
 * Works in a scratch directory under $TMPDIR (or /tmp), removed at the end.
 * Prints "ok - ..." / "not ok - ..." lines; exit status 0 if all passed.
 *
 * The program exports virReportErrorHelper (linked with -rdynamic), so the
 * plugin finds it with dlsym(RTLD_DEFAULT) as it finds libvirt's, and every
 * message it reports is checked here.
 */
#define _GNU_SOURCE
#include "lockd.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/sysmacros.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "vlm.h"

static struct vlm_driver *drv;
static char last_error[2048];
static int last_domain, last_code;
static unsigned passed, failed;
static char dir[80], conf[128], sock[128], space_dir[128], helper_bin[4096];
static pid_t helper = -1;

/* What libvirt.so exports; the plugin looks it up at drvInit. */
__attribute__((visibility("default"), format(printf, 6, 7))) void
virReportErrorHelper(int domcode, int errcode, const char *filename, const char *funcname,
                     size_t linenr, const char *fmt, ...);

void
virReportErrorHelper(int domcode, int errcode, const char *filename, const char *funcname,
                     size_t linenr, const char *fmt, ...)
{
    va_list ap;

    (void)filename, (void)funcname, (void)linenr;
    last_domain = domcode;
    last_code = errcode;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof(last_error), fmt, ap);
    va_end(ap);
}

static void
check(int cond, const char *what)
{
    printf("%s - %s\n", cond ? "ok" : "not ok", what);
    if (cond)
        passed++;
    else {
        failed++;
        printf("#   last error: [%d/%d] %s\n", last_domain, last_code, last_error);
    }
}

static int
error_has(const char *text)
{
    return strstr(last_error, text) != NULL;
}

static void
write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");

    if (!f || fputs(text, f) < 0 || fclose(f) != 0) {
        perror(path);
        exit(2);
    }
}

/* drvInit with a configuration file holding text (NULL: no file). */
static int
init_with(const char *text)
{
    drv->drvDeinit();
    unlink(conf);
    if (text)
        write_file(conf, text);
    last_error[0] = '\0';
    return drv->drvInit(1000000, conf, 0);
}

static void
test_config(void)
{
    char good[512];

    check(init_with(NULL) == 0, "config: a missing file means defaults");
    snprintf(
        good, sizeof(good),
        "# comment\n\nlockspace = \"%s\"  # trailing comment\nkey_mode = 'verbatim'\n"
        "helper_socket = \"%s\"\nauto_disk_leases = 1\nrequire_lease_for_disks=0\n",
        space_dir, sock);
    check(init_with(good) == 0, "config: every setting accepted");
    check(init_with("lockpace = \"/x\"\n") < 0 && error_has("qemu-test.conf:1") &&
              error_has("a known setting"),
          "config: an unknown setting fails loudly, naming file and line");
    check(init_with("auto_disk_leases = \"yes\"\n") < 0 && error_has("right kind"),
          "config: a string where 0/1 belongs fails");
    check(init_with("auto_disk_leases = 2\n") < 0, "config: 2 is not a boolean");
    check(init_with("lockspace = \"relative/dir\"\n") < 0,
          "config: a relative lockspace fails");
    check(init_with("key_mode = \"sideways\"\n") < 0,
          "config: an unknown key mode fails");
    check(init_with("lockspace = \"/x\" junk\n") < 0, "config: text after a value fails");
    check(init_with("lockspace = \"/x\n") < 0, "config: an unterminated string fails");
    check(init_with("= 1\n") < 0, "config: a line without a name fails");
    drv->drvDeinit();
    check(drv->drvInit(2000000, conf, 0) < 0 && error_has("ABI"),
          "init: another major plugin ABI is refused");
    check(drv->drvInit(1000000, conf, 1) < 0, "init: unknown flags are refused");
}

/* ------------------------------------------------------------------------
 * Guests: a process that waits to be killed, and manager objects for it
 */

static pid_t
spawn_guest(void)
{
    pid_t pid = fork();

    if (pid == 0) {
        /* Even if this program dies, its children do not outlive it. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        for (;;)
            pause();
    }
    return pid;
}

static void
end(pid_t pid)
{
    if (pid > 0) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
    }
}

/* A manager object for guest name/pid, like virDomainLockManagerNew(). */
static int
new_manager(struct vlm_manager *man, const char *name, pid_t pid)
{
    struct vlm_param p[5];
    unsigned i;

    memset(p, 0, sizeof(p));
    p[0].type = P_UUID, p[0].key = "uuid";
    for (i = 0; i < 16; i++)
        p[0].value.uuid[i] = (unsigned char)(name[0] + i);
    p[1].type = P_STRING, p[1].key = "name", p[1].value.str = (char *)name;
    p[2].type = P_UINT, p[2].key = "id", p[2].value.iv = 1;
    p[3].type = P_UINT, p[3].key = "pid", p[3].value.iv = pid;
    p[4].type = P_CSTRING, p[4].key = "uri", p[4].value.cstr = "qemu:///system";
    memset(man, 0, sizeof(*man));
    man->driver = drv;
    return drv->drvNew(man, 0, 5, p, 1 /* VIR_LOCK_MANAGER_NEW_STARTED */);
}

static int
add_disk(struct vlm_manager *man, const char *file, unsigned flags)
{
    char path[256];

    /* An absolute name is a device path, as given. */
    snprintf(path, sizeof(path), "%s%s%s", file[0] == '/' ? "" : dir,
             file[0] == '/' ? "" : "/", file);
    return drv->drvAddResource(man, DISK, path, 0, NULL, flags);
}

/* One lock call as libvirt makes it: new, resources, call, free.  disks is
 * a list of "name" or "name:s" (shared) or "name:r" (read-only); action is
 * the guest's <on_lockfailure> (0: default).  A REGISTER_ONLY call runs in
 * a forked child, as libvirt makes it (between fork and exec of QEMU). */
static int call_in(const char *guest, pid_t pid, unsigned acquire_flags, int release,
                   const char *disks, int action);

static int
call_act(const char *guest, pid_t pid, unsigned acquire_flags, int release,
         const char *disks, int action)
{
    pid_t child;
    int st;

    if (!(acquire_flags & REG_ONLY) || release)
        return call_in(guest, pid, acquire_flags, release, disks, action);
    fflush(stdout);
    child = fork();
    if (child == 0)
        _exit(call_in(guest, pid, acquire_flags, release, disks, action) == 0 ? 0 : 1);
    if (child < 0 || waitpid(child, &st, 0) != child)
        return -97;
    return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : -1;
}

static int
call(const char *guest, pid_t pid, unsigned acquire_flags, int release, const char *disks)
{
    return call_act(guest, pid, acquire_flags, release, disks, 0);
}

static int
call_in(const char *guest, pid_t pid, unsigned acquire_flags, int release,
        const char *disks, int action)
{
    struct vlm_manager man;
    char list[256], *save = NULL, *d;
    int r, fd = 7;

    if (new_manager(&man, guest, pid) < 0)
        return -1;
    snprintf(list, sizeof(list), "%s", disks);
    for (d = strtok_r(list, " ", &save); d; d = strtok_r(NULL, " ", &save)) {
        char *mode = strchr(d, ':');
        unsigned fl = 0;

        if (mode) {
            *mode++ = '\0';
            fl = *mode == 's' ? SHARED : READONLY;
        }
        if (add_disk(&man, d, fl) < 0) {
            drv->drvFree(&man);
            return -1;
        }
    }
    last_error[0] = '\0';
    if (release) {
        char *state = (char *)"junk";

        r = drv->drvRelease(&man, &state, 0);
        if (state)
            r = -99;
    } else {
        r = drv->drvAcquire(&man, NULL, acquire_flags, action, &fd);
        if (fd != -1)
            r = -98;
    }
    drv->drvFree(&man);
    return r;
}

static int
owner_row(void *userdata, int32_t pid, uint32_t uid, const char *uuid, const char *name,
          uint32_t leases)
{
    (void)uid, (void)uuid, (void)name, (void)leases;
    return pid == *(pid_t *)userdata ? 1 : 0;
}

/* Whether the helper knows pid as an owner. */
static int
registered(pid_t pid)
{
    lockd_conn *c;
    int r;

    if (lockd_conn_open(sock, &c) < 0)
        return 0;
    r = lockd_conn_owners(c, owner_row, &pid);
    lockd_conn_close(c);
    return r == 1;
}

static int probe_direct(const char *file);

static int
wait_probe_direct(const char *file)
{
    int i;

    for (i = 0; i < 200; i++) {
        if (probe_direct(file) == LOCKD_FREE)
            return 1;
        usleep(25000);
    }
    return 0;
}

/* The state of disk file's lease in the test lockspace. */
static int
probe(const char *file)
{
    char path[256], key[LOCKD_KEY_SIZE];
    lockd_space *space;
    int r;

    snprintf(path, sizeof(path), "%s%s%s", file[0] == '/' ? "" : dir,
             file[0] == '/' ? "" : "/", file);
    r = lockd_space_open(space_dir, LOCKD_OPEN_READONLY, &space);
    if (r == -ENOENT)
        return LOCKD_FREE; /* no lockspace yet, so no lease */
    if (r < 0)
        return -1;
    r = lockd_space_key(space, path, key);
    if (r == 0)
        r = lockd_probe(space, key, NULL);
    lockd_space_close(space);
    return r;
}

static int
wait_probe(const char *file, int want)
{
    int i;

    for (i = 0; i < 200; i++) {
        if (probe(file) == want)
            return 1;
        usleep(25000);
    }
    return 0;
}

/* ------------------------------------------------------------------------
 * The helper
 */

static void
start_helper(void)
{
    lockd_conn *c;
    int i;

    helper = fork();
    if (helper == 0) {
        char log[160];
        int fd;

        prctl(PR_SET_PDEATHSIG, SIGTERM);
        snprintf(log, sizeof(log), "%s/helper.log", dir);
        fd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
        if (fd >= 0)
            dup2(fd, 2);
        execl(helper_bin, helper_bin, "--socket", sock, (char *)NULL);
        _exit(127);
    }
    for (i = 0; i < 400; i++) {
        if (lockd_conn_open(sock, &c) == 0) {
            lockd_conn_close(c);
            return;
        }
        usleep(25000);
    }
    fprintf(stderr, "fake-libvirt: %s did not start\n", helper_bin);
}

static void
stop_helper(void)
{
    if (helper > 0) {
        kill(helper, SIGTERM);
        waitpid(helper, NULL, 0);
        helper = -1;
    }
}

static void
use_config(const char *extra)
{
    char text[1024];

    snprintf(text, sizeof(text), "lockspace = \"%s\"\nhelper_socket = \"%s\"\n%s",
             space_dir, sock, extra);
    if (init_with(text) < 0) {
        fprintf(stderr, "fake-libvirt: config refused: %s\n", last_error);
        exit(2);
    }
}

static void
test_lifecycle(void)
{
    pid_t g = spawn_guest(), h = spawn_guest();
    char want[256];

    use_config("");
    check(call("g1", g, REG_ONLY | RESTRICT, 0, "a b:s r:r") == 0,
          "start: REGISTER_ONLY|RESTRICT in the child succeeds, leaves *fd -1");
    check(registered(g), "start: the child registered the guest with the helper");
    check(probe("a") == LOCKD_FREE, "start: REGISTER_ONLY takes no lease");
    check(call("g1", g, 0, 0, "a b:s r:r") == 0, "CPU start: acquire succeeds");
    check(probe("a") == LOCKD_EXCLUSIVE, "a writable disk gets an exclusive lease");
    check(probe("b") == LOCKD_SHARED, "a <shareable/> disk gets a shared lease");
    check(probe("r") == LOCKD_FREE, "a read-only disk gets no lease");
    check(call("g1", g, 0, 0, "a b:s r:r") == 0, "acquiring again is harmless");
    check(call("g1", g, REG_ONLY, 0, "a") == 0, "registering again is harmless");
    check(call("g2", h, 0, 0, "b:s") == 0 && probe("b") == LOCKD_SHARED,
          "a second guest shares the shareable disk");
    snprintf(
        want, sizeof(want),
        "lockd: guest 'g2' refused: disk %s/a is held exclusively by 'g1' (pid %d, uuid ",
        dir, (int)g);
    check(call("g2", h, 0, 0, "c a") < 0 && error_has(want) && last_code == 87 &&
              last_domain == 42,
          "a busy disk refuses the guest: one line naming the disk and the holder");
    check(!strchr(last_error, '\n'), "the refusal has no newline");
    check(probe("c") == LOCKD_FREE, "a refused acquire keeps none of its leases");
    check(call("g1", g, 0, 1, "b:s") == 0 && probe("a") == LOCKD_EXCLUSIVE &&
              probe("b") == LOCKD_SHARED,
          "unplug: releasing one disk keeps the others (b still held by g2)");
    check(call("g2", h, 0, 1, "b:s") == 0 && probe("b") == LOCKD_FREE,
          "the last sharer's release frees the shared lease");
    check(call("g1", g, 0, 1, "a b:s r:r") == 0 && probe("a") == LOCKD_FREE,
          "pause: releasing every disk frees them");
    check(call("g1", g, 0, 1, "a") == 0, "releasing what is not held is harmless");
    check(call("g1", g, 0, 0, "a b:s") == 0 && probe("a") == LOCKD_EXCLUSIVE,
          "resume: the leases are taken again");
    end(g);
    check(wait_probe("a", LOCKD_FREE) && wait_probe("b", LOCKD_FREE),
          "the guest's death frees its leases (the helper's pidfd)");
    end(h);
}

/* <lease> elements: the key in directory path/lockspace. */
static int
lease_call(pid_t pid, const char *key, unsigned long long offset, unsigned flags,
           int release)
{
    struct vlm_manager man;
    struct vlm_param p[3];
    int r, fd;

    memset(p, 0, sizeof(p));
    p[0].type = P_STRING, p[0].key = "path", p[0].value.str = dir;
    p[1].type = P_ULONG, p[1].key = "offset", p[1].value.ul = offset;
    p[2].type = P_STRING, p[2].key = "lockspace", p[2].value.str = (char *)"leases";
    if (new_manager(&man, "gl", pid) < 0)
        return -1;
    r = drv->drvAddResource(&man, LEASE, key, 3, p, flags);
    if (r == 0)
        r = release ? drv->drvRelease(&man, NULL, 0)
                    : drv->drvAcquire(&man, NULL, 0, 0, &fd);
    drv->drvFree(&man);
    return r;
}

static int
probe_lease(const char *name)
{
    char ldir[128], key[LOCKD_KEY_SIZE];
    lockd_space *space;
    int r;

    snprintf(ldir, sizeof(ldir), "%s/leases", dir);
    if (lockd_key_valid(name))
        snprintf(key, sizeof(key), "%s", name);
    else if (lockd_key_resource(name, strlen(name), key) < 0)
        return -1;
    if (lockd_space_open(ldir, LOCKD_OPEN_READONLY, &space) < 0)
        return -1;
    r = lockd_probe(space, key, NULL);
    lockd_space_close(space);
    return r;
}

/*
 * A guest whose disk's lockspace was taken and whose <lease> lockspace
 * cannot be opened (a file where its directory should be) is refused, and
 * gives back the disk's lease too: all or nothing across lockspaces.
 */
static void
test_all_or_nothing_across_lockspaces(void)
{
    struct vlm_manager man;
    struct vlm_param p[2];
    char path[256];
    pid_t g = spawn_guest();
    int r = -1, fd;
    FILE *f;

    snprintf(path, sizeof(path), "%s/notadir", dir);
    f = fopen(path, "w");
    if (f)
        fclose(f);
    use_config("");
    memset(p, 0, sizeof(p));
    p[0].type = P_STRING, p[0].key = "path", p[0].value.str = dir;
    p[1].type = P_STRING, p[1].key = "lockspace", p[1].value.str = (char *)"notadir";
    if (new_manager(&man, "gx", g) == 0) {
        r = add_disk(&man, "x", 0);
        if (r == 0)
            r = drv->drvAddResource(&man, LEASE, "lease-x", 2, p, 0);
        if (r == 0)
            r = drv->drvAcquire(&man, NULL, 0, 0, &fd);
        drv->drvFree(&man);
    }
    check(r < 0 && error_has("cannot open lockspace") && probe("x") == LOCKD_FREE,
          "a lockspace that cannot be opened refuses the guest and frees its other leases");
    end(g);
}

static void
test_leases(void)
{
    static const char hex[] =
        "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    char ldir[128];
    pid_t g = spawn_guest();

    snprintf(ldir, sizeof(ldir), "%s/leases", dir);
    mkdir(ldir, 0700);
    use_config("");
    check(lease_call(g, "my-lease", 0, 0, 0) == 0 &&
              probe_lease("my-lease") == LOCKD_EXCLUSIVE,
          "<lease>: a key string is hashed into a lease in path/lockspace");
    check(lease_call(g, hex, 0, SHARED, 0) == 0 && probe_lease(hex) == LOCKD_SHARED,
          "<lease>: a 64-hex key names that lease file; shared when flagged");
    check(lease_call(g, "my-lease", 0, 0, 1) == 0 &&
              probe_lease("my-lease") == LOCKD_FREE && probe_lease(hex) == LOCKD_SHARED,
          "<lease>: releasing one lease keeps the other");
    check(lease_call(g, "x", 4096, 0, 0) < 0 && error_has("offset"),
          "<lease>: a non-zero offset is refused");
    end(g);
}

/*
 * Unlock the helper's lease of disk file through a copy of its open file
 * description (pidfd_getfd(2)), as a manager's own copy was unlocked in the
 * case that was reproduced: a multi-disk hand-over failed mid-way, the
 * release of the earlier hand-overs failed, and lockd_lease_release()
 * unlocked descriptions the helper still listed.  Returns 0 or -1.
 */
static int
unlock_helper_copy(const char *file)
{
    struct flock fl = {.l_type = F_UNLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 1};
    char path[256], key[LOCKD_KEY_SIZE], want[512], link[512], fdpath[64];
    lockd_space *space;
    int pidfd, fd, n, r = -1;

    snprintf(path, sizeof(path), "%s/%s", dir, file);
    if (lockd_space_open(space_dir, LOCKD_OPEN_READONLY, &space) < 0)
        return -1;
    n = lockd_space_key(space, path, key);
    lockd_space_close(space);
    if (n < 0)
        return -1;
    snprintf(want, sizeof(want), "%s/%s", space_dir, key);
    pidfd = (int)syscall(SYS_pidfd_open, helper, 0);
    for (fd = 3; pidfd >= 0 && fd < 1024 && r < 0; fd++) {
        snprintf(fdpath, sizeof(fdpath), "/proc/%d/fd/%d", (int)helper, fd);
        n = (int)readlink(fdpath, link, sizeof(link) - 1);
        if (n <= 0)
            continue;
        link[n] = '\0';
        if (strcmp(link, want) == 0) {
            int copy = (int)syscall(SYS_pidfd_getfd, pidfd, fd, 0);

            if (copy >= 0 && fcntl(copy, F_OFD_SETLK, &fl) == 0)
                r = 0;
            if (copy >= 0)
                close(copy);
        }
    }
    if (pidfd >= 0)
        close(pidfd);
    return r;
}

/*
 * The helper's word alone never makes the plugin skip a disk: with the
 * guest's lease unlocked behind the helper's back, acquiring again (a
 * resume) takes the disk anew instead of trusting the helper's record, and
 * a second guest is refused it.
 */
static void
test_lost_lease(void)
{
    pid_t g = spawn_guest(), h = spawn_guest();

    use_config("");
    check(call("g1", g, 0, 0, "lost") == 0 && probe("lost") == LOCKD_EXCLUSIVE,
          "lost lease: the guest holds its disk");
    check(unlock_helper_copy("lost") == 0 && probe("lost") == LOCKD_FREE,
          "lost lease: unlocked through another copy of its description, it is free");
    check(call("g1", g, 0, 0, "lost") == 0 && probe("lost") == LOCKD_EXCLUSIVE,
          "lost lease: acquiring again takes the disk anew, not the helper's word");
    check(call("g2", h, 0, 0, "lost") < 0 && error_has("is held exclusively by 'g1'"),
          "lost lease: a second guest is refused the disk");
    end(g);
    check(wait_probe("lost", LOCKD_FREE), "lost lease: the guest's death frees it");
    end(h);
}

static void
test_refusals(void)
{
    pid_t g = spawn_guest();
    char text[256];

    use_config("auto_disk_leases = 0\n");
    check(call("g3", g, 0, 0, "a") < 0 && error_has("no <lease>"),
          "auto_disk_leases = 0: writable disks without a lease are refused by default");
    check(call("g3", g, 0, 0, "a:s a:r") == 0 && probe("a") == LOCKD_FREE,
          "auto_disk_leases = 0: shared and read-only disks need no lease");
    use_config("auto_disk_leases = 0\nrequire_lease_for_disks = 0\n");
    check(call("g3", g, 0, 0, "a") == 0 && probe("a") == LOCKD_FREE,
          "require_lease_for_disks = 0: the guest starts, its disks unleased");
    use_config("key_mode = \"canonical\"\n");
    snprintf(text, sizeof(text), "lockspace %s records key mode verbatim", space_dir);
    check(call("g3", g, 0, 0, "a") < 0 && error_has(text) && error_has("canonical"),
          "a key mode that contradicts the lockspace refuses the guest, naming both");
    use_config("");
    check(call_act("g3", g, 0, 0, "a", 2 /* restart */) < 0 &&
              error_has(
                  "lockd: guest 'g3' refused: <on_lockfailure>restart</on_lockfailure> "
                  "is not supported by lockd") &&
              error_has("use poweroff, pause or ignore") && last_code == 67,
          "<on_lockfailure>restart</on_lockfailure> is refused, saying what to use");
    check(probe("a") == LOCKD_FREE, "restart: nothing is taken");
    check(call_act("g3", g, 0, 0, "a", 3 /* pause */) == 0 &&
              probe("a") == LOCKD_EXCLUSIVE && call_act("g3", g, 0, 1, "a", 3) == 0,
          "<on_lockfailure>pause</on_lockfailure> is accepted");
    check(call_act("g3", g, 0, 0, "a", 4 /* ignore */) == 0 &&
              probe("a") == LOCKD_EXCLUSIVE && call_act("g3", g, 0, 1, "a", 4) == 0,
          "<on_lockfailure>ignore</on_lockfailure> is accepted");
    stop_helper();
    check(call("g3", g, REG_ONLY | RESTRICT, 0, "a") == 0 && last_error[0] == '\0',
          "no helper: registering in the child defers the refusal to the CPU start");
    check(call("g3", g, 0, 0, "a") < 0 &&
              error_has(
                  "lockd: cannot protect guest 'g3': lockd-helper is unreachable at") &&
              error_has(sock) && last_code == 9,
          "no helper: the guest is refused at CPU start with the plugin's message");
    check(probe("a") == LOCKD_FREE, "no helper: nothing is taken");
    end(g);
}

/* No lockspace configured: each disk's lease is on the disk itself (byte 0
 * of the image), as virtlockd without file_lockspace_dir. */
static int
probe_direct(const char *file)
{
    char path[256];

    snprintf(path, sizeof(path), "%s/%s", dir, file);
    return lockd_probe_direct(path, NULL);
}

static void
test_direct(void)
{
    pid_t g = spawn_guest(), h = spawn_guest();
    char text[512], path[256];
    struct stat st;

    for (const char *f = "abc"; *f; f++) {
        FILE *fp;

        snprintf(path, sizeof(path), "%s/%c", dir, *f);
        fp = fopen(path, "a");
        if (fp)
            fclose(fp);
    }
    snprintf(text, sizeof(text), "helper_socket = \"%s\"\n", sock);
    if (init_with(text) < 0) {
        fprintf(stderr, "fake-libvirt: config refused: %s\n", last_error);
        exit(2);
    }
    check(call("gd", g, REG_ONLY | RESTRICT, 0, "a") == 0 &&
              call("gd", g, 0, 0, "a b:s") == 0,
          "direct: a guest starts with no lockspace configured");
    check(probe_direct("a") == LOCKD_EXCLUSIVE && probe_direct("b") == LOCKD_SHARED,
          "direct: its disks themselves are locked, exclusive and shared");
    snprintf(path, sizeof(path), "%s/a", dir);
    check(stat(path, &st) == 0 && st.st_size == 0,
          "direct: nothing is written to the disk");
    snprintf(text, sizeof(text),
             "lockd: guest 'gd2' refused: disk %s/a is held exclusively by 'gd' (pid %d",
             dir, (int)g);
    check(call("gd2", h, 0, 0, "a") < 0 && error_has(text) && last_code == 87,
          "direct: a second guest is refused, naming the holder");
    check(call("gd2", h, 0, 0, "b:s") == 0, "direct: a shareable disk is shared");
    snprintf(text, sizeof(text), "cannot take the direct lease of disk %s/nosuch: ", dir);
    check(call("gd2", h, 0, 0, "c nosuch") < 0 && error_has(text) &&
              error_has("No such file or directory") && probe_direct("c") == LOCKD_FREE,
          "direct: a missing disk refuses the guest, and nothing is taken");
    check(call("gd", g, 0, 1, "a") == 0 && probe_direct("a") == LOCKD_FREE &&
              probe_direct("b") == LOCKD_SHARED,
          "direct: releasing one disk keeps the others");
    end(g);
    end(h);
    check(wait_probe_direct("b"), "direct: the guests' death frees their disks");
    use_config("");
}

/*
 * Block devices, named as virtlockd names them: with lvm_lockspace_dir and
 * scsi_lockspace_dir set, a /dev path of an LV spelled /dev/VG/LV gets its
 * LV UUID as its lease file's name in the LVM lockspace, a SCSI disk its
 * SCSI id in the SCSI lockspace, /dev/dm-N (which lvs cannot read) the
 * file lockspace's hash of its path.  The devices come from the sample
 * tree test/sysfs/lvm-lv (the plugin's test seam LOCKD_TEST_SYSFS_ROOT),
 * their nodes made on a tmpfs /dev of a private mount namespace, in a
 * child.
 */
static const char *sysfs_trees;

static int
probe_named(const char *sub, const char *name)
{
    char d[256];
    lockd_space *space;
    int r;

    snprintf(d, sizeof(d), "%s/%s", dir, sub);
    if (lockd_space_open(d, LOCKD_OPEN_READONLY, &space) < 0)
        return -1;
    r = lockd_probe(space, name, NULL);
    if (r >= 0 && lockd_space_mode(space) !=
                      (strcmp(sub, "lvm") == 0 ? LOCKD_MODE_LVM : LOCKD_MODE_SCSI))
        r = -2;
    lockd_space_close(space);
    return r;
}

static void
block_child(pid_t g, pid_t h, const char *conf_text)
{
    static const char lvm[] = "06UgP5-2rhb-w3Bo-3mdR-WeoL-pytO-SAa2ky";
    static const char scsi[] = "0QEMU_QEMU_HARDDISK_pv0";
    static const struct {
        const char *path;
        unsigned maj, min;
    } nodes[] = {{"/dev/vg0/lv-data", 253, 0},
                 {"/dev/mapper/vg0-lv--data", 253, 0},
                 {"/dev/dm-0", 253, 0},
                 {"/dev/sda", 8, 0}};
    char want[512];
    size_t i;

    if (unshare(CLONE_NEWNS) < 0 ||
        mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0 ||
        mount("fake-libvirt", "/dev", "tmpfs", 0, "mode=0755") < 0 ||
        mkdir("/dev/vg0", 0755) < 0 || mkdir("/dev/mapper", 0755) < 0) {
        printf("not ok - block devices: a private /dev: %s\n", strerror(errno));
        _exit(1);
    }
    for (i = 0; i < sizeof(nodes) / sizeof(nodes[0]); i++)
        if (mknod(nodes[i].path, S_IFBLK | 0600, makedev(nodes[i].maj, nodes[i].min)) <
            0) {
            printf("not ok - block devices: mknod %s: %s\n", nodes[i].path,
                   strerror(errno));
            _exit(1);
        }
    /* Initialised here: to the plugin, a process other than the one that
     * initialised it is the child libvirt forks for QEMU. */
    if (init_with(conf_text) < 0) {
        printf("not ok - block devices: config refused: %s\n", last_error);
        _exit(1);
    }
    check(call("gb", g, 0, 0, "/dev/vg0/lv-data /dev/sda /dev/dm-0") == 0,
          "block devices: a guest on an LV, a SCSI disk and /dev/dm-0 starts");
    check(probe_named("lvm", lvm) == LOCKD_EXCLUSIVE,
          "block devices: the LV's lease is its LV UUID, raw, in the LVM lockspace (mode "
          "lvm)");
    check(probe_named("scsi", scsi) == LOCKD_EXCLUSIVE,
          "block devices: the SCSI disk's lease is its SCSI id in the SCSI lockspace");
    check(probe("/dev/dm-0") == LOCKD_EXCLUSIVE,
          "block devices: /dev/dm-0 (no LVM name: lvs cannot read that spelling) falls "
          "back "
          "to the file lockspace");
    check(call("gb", g, 0, 0, "/dev/vg0/lv-data /dev/sda /dev/dm-0") == 0,
          "block devices: acquiring again is harmless (the helper lists them)");
    snprintf(
        want, sizeof(want),
        "lockd: guest 'gb2' refused: disk /dev/mapper/vg0-lv--data is held exclusively "
        "by 'gb' (pid %d",
        (int)g);
    check(call("gb2", h, 0, 0, "/dev/mapper/vg0-lv--data") < 0 && error_has(want),
          "block devices: the same LV spelled /dev/mapper/VG-LV is refused, naming the "
          "holder");
    check(call("gb", g, 0, 1, "/dev/sda") == 0 &&
              probe_named("scsi", scsi) == LOCKD_FREE &&
              probe_named("lvm", lvm) == LOCKD_EXCLUSIVE,
          "block devices: releasing the SCSI disk keeps the LV");
    check(call("gb", g, 0, 1, "/dev/vg0/lv-data /dev/dm-0") == 0 &&
              probe_named("lvm", lvm) == LOCKD_FREE,
          "block devices: releasing the rest frees them");
    fflush(stdout);
    _exit(failed ? 1 : 0);
}

static void
test_block_devices(void)
{
    pid_t g = spawn_guest(), h = spawn_guest(), c;
    char text[1024], root[512];
    int st;

    snprintf(root, sizeof(root), "%s/lvm-lv", sysfs_trees);
    setenv("LOCKD_TEST_SYSFS_ROOT", root, 1);
    snprintf(text, sizeof(text),
             "lockspace = \"%s\"\nhelper_socket = \"%s\"\n"
             "lvm_lockspace_dir = \"%s/lvm\"\nscsi_lockspace_dir = \"%s/scsi\"\n",
             space_dir, sock, dir, dir);
    fflush(stdout);
    c = fork();
    if (c == 0)
        block_child(g, h, text);
    check(c > 0 && waitpid(c, &st, 0) == c && WIFEXITED(st) && WEXITSTATUS(st) == 0,
          "block devices: every check of the child passed");
    unsetenv("LOCKD_TEST_SYSFS_ROOT");
    end(g);
    end(h);
    use_config("");
}

/*
 * Migration with migration_check = 1: the driver says it uses lock state;
 * inquire (the source at Begin) and release (at a pause) give the leases'
 * generations; the resume on the destination takes them and checks that
 * nobody else held them in between: a third party that took the disk and
 * let go makes it refuse, and what it took goes back.  Off, no state.
 */
enum { ST_ACQUIRE, ST_RELEASE, ST_INQUIRE };

static int
state_call(const char *guest, pid_t pid, int op, const char *disk, const char *in,
           char **out)
{
    struct vlm_manager man;
    int r, fd;

    if (out)
        *out = NULL;
    if (new_manager(&man, guest, pid) < 0)
        return -1;
    last_error[0] = '\0';
    r = add_disk(&man, disk, 0);
    if (r == 0)
        r = op == ST_ACQUIRE   ? drv->drvAcquire(&man, in, 0, 0, &fd)
            : op == ST_RELEASE ? drv->drvRelease(&man, out, 0)
                               : drv->drvInquire(&man, out, 0);
    drv->drvFree(&man);
    return r;
}

static void
test_migration_state(void)
{
    pid_t g = spawn_guest(), h = spawn_guest();
    char *s1 = NULL, *s2 = NULL, *s3 = NULL, path[256], key[LOCKD_KEY_SIZE];
    const char *k = key;
    lockd_space *space;
    lockd_lease *third = NULL;

    use_config("migration_check = 1\n");
    check(drv->flags == 1, "migration_check: the driver says it uses lock state");
    check(state_call("mig", g, ST_ACQUIRE, "m", NULL, NULL) == 0 &&
              state_call("mig", g, ST_INQUIRE, "m", NULL, &s1) == 0 && s1 &&
              strncmp(s1, "lockd1 ", 7) == 0 &&
              strspn(s1 + 7, "0123456789abcdef: ") == strlen(s1 + 7),
          "migration_check: inquire gives the lease's generation (hex, colons, spaces "
          "only)");
    printf("# state: %s\n", s1 ? s1 : "(none)");
    check(
        state_call("mig", g, ST_RELEASE, "m", NULL, &s2) == 0 && s2 && s1 &&
            strcmp(s1, s2) == 0 && probe("m") == LOCKD_FREE,
        "migration_check: the release at the switchover gives the same state, and frees");
    check(state_call("mig", h, ST_ACQUIRE, "m", s2, NULL) == 0 &&
              probe("m") == LOCKD_EXCLUSIVE,
          "migration_check: the destination resumes: nobody held the disk in between");
    check(state_call("mig", h, ST_RELEASE, "m", NULL, &s3) == 0 && s3,
          "migration_check: a pause on the destination gives its state");
    snprintf(path, sizeof(path), "%s/m", dir);
    if (lockd_space_open(space_dir, 0, &space) == 0) {
        if (lockd_space_key(space, path, key) == 0 &&
            lockd_acquire(space, 1, &k, NULL, LOCKD_TRY, &third) == 0)
            lockd_lease_release(third);
        lockd_space_close(space);
    }
    check(
        state_call("mig", g, ST_ACQUIRE, "m", s3, NULL) < 0 &&
            error_has("lockd: guest 'mig' refused: disk") &&
            error_has("changed hands while the guest was paused or migrating") &&
            last_code == 87 && probe("m") == LOCKD_FREE,
        "migration_check: a third party held the disk in between: the resume is refused "
        "and takes nothing");
    check(state_call("mig", g, ST_ACQUIRE, "m", "lockd1", NULL) < 0 &&
              error_has("the lock state names no generation for disk") &&
              probe("m") == LOCKD_FREE,
          "migration_check: a state that leaves a disk out is refused");
    {
        char zero[160];

        snprintf(zero, sizeof(zero), "lockd1 %s:%016x:0", key, 0);
        check(state_call("mig", g, ST_ACQUIRE, "m", zero, NULL) < 0 &&
                  error_has("has no holder record to tell whether it changed hands") &&
                  probe("m") == LOCKD_FREE,
              "migration_check: a disk whose record could not be read at the pause is "
              "refused");
    }
    check(state_call("mig", g, ST_ACQUIRE, "m", "sanlock:xyz:1", NULL) < 0 &&
              error_has("is not lockd's") && probe("m") == LOCKD_FREE,
          "migration_check: a state that is not lockd's is refused");
    free(s1), free(s2), free(s3);
    use_config("");
    check(drv->flags == 0 && state_call("mig", g, ST_ACQUIRE, "m", NULL, NULL) == 0 &&
              state_call("mig", g, ST_INQUIRE, "m", NULL, &s1) == 0 && !s1 &&
              state_call("mig", g, ST_RELEASE, "m", NULL, &s1) == 0 && !s1,
          "migration_check off (the default): no lock state, as libvirt's own lockd "
          "plugin");
    end(g);
    end(h);
}

static void
remove_tree(void)
{
    char cmd[128];

    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "fake-libvirt: could not remove %s\n", dir);
}

int
main(int argc, char **argv)
{
    const char *tmp;
    void *h;

    if (argc != 4) {
        fprintf(stderr, "usage: fake-libvirt PLUGIN.so LOCKD-HELPER SYSFS-TREES\n");
        return 2;
    }
    sysfs_trees = argv[3];
    h = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    drv = h ? dlsym(h, "virLockDriverImpl") : NULL;
    if (!drv || !realpath(argv[2], helper_bin)) {
        fprintf(stderr, "fake-libvirt: %s\n", h ? argv[2] : dlerror());
        return 2;
    }
    check(drv->version == 1000000 && drv->flags == 0, "the driver table says ABI 1.0.0");
    tmp = getenv("TMPDIR");
    if (!tmp || tmp[0] != '/' || strlen(tmp) > 48)
        tmp = "/tmp";
    snprintf(dir, sizeof(dir), "%s/lockd-fake-libvirt.XXXXXX", tmp);
    if (!mkdtemp(dir)) {
        perror(dir);
        return 2;
    }
    snprintf(conf, sizeof(conf), "%s/qemu-test.conf", dir);
    snprintf(sock, sizeof(sock), "%s/helper.sock", dir);
    snprintf(space_dir, sizeof(space_dir), "%s/lockspace", dir);
    test_config();
    start_helper();
    test_lifecycle();
    test_leases();
    test_lost_lease();
    test_all_or_nothing_across_lockspaces();
    test_direct();
    test_block_devices();
    test_migration_state();
    test_refusals();
    stop_helper();
    drv->drvDeinit();
    remove_tree();
    printf("%u passed, %u failed\n", passed, failed);
    return failed ? 1 : 0;
}
