/* SPDX-License-Identifier: MIT */
/*
 * gc-race: the real virtlockd, lockd acquirers and lockd gc with no minimum
 * age, all on the same few disks of one lockspace for a bounded time; no
 * disk may ever be held by two at once.
 *
 * virtlockd is driven through libvirt's own lock plugin (lockd.so, loaded
 * here through its ABI as libvirtd loads it: test/libvirt/fake-libvirt.c),
 * so the leases are taken by virtlockd itself: POSIX locks on its lease
 * files, which it unlinks on release.  Each virtlockd holder is a "guest"
 * process of its own, as virtlockd wants (it kills the owner when its
 * connection closes).  Every holder, lockd or virtlockd, counts itself in
 * shared memory while it holds a disk; a count above one is an overlap.
 *
 * usage: gc-race LIBVIRT-LOCKD-PLUGIN.so CONF LOCKSPACE SECONDS
 * (virtlockd must be listening where the plugin looks, and CONF must name
 * LOCKSPACE as file_lockspace_dir with auto_disk_leases = 1.)
 * Prints "ok - ..." / "not ok - ..." lines; exit status 0 if all passed.
 */
#define _GNU_SOURCE
#include "lockd.h"

#include <dlfcn.h>
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "vlm.h"

#define NDISKS 3
#define VL_WORKERS 2
#define LK_WORKERS 2

struct shared {
    atomic_int holders[NDISKS];
    atomic_long overlaps, vl_taken, vl_busy, vl_errors, lk_taken, lk_busy, gc_runs,
        gc_removed;
    atomic_int errors;
    char error[256];
};

static struct shared *sh;
static struct vlm_driver *drv;
static const char *space_dir;
static struct timespec end;

static int
running(void)
{
    struct timespec now;

    clock_gettime(CLOCK_MONOTONIC, &now);
    return now.tv_sec < end.tv_sec ||
           (now.tv_sec == end.tv_sec && now.tv_nsec < end.tv_nsec);
}

/* Record the first failure; r is -errno. */
static void
fail(const char *what, int r)
{
    if (atomic_fetch_add(&sh->errors, 1) == 0)
        snprintf(sh->error, sizeof(sh->error), "%s: %s", what, strerror(-r));
}

static void
disk_path(int d, char *buf, size_t size)
{
    snprintf(buf, size, "/var/lib/images/gc-race-%d.img", d);
}

/* While holding disk d: count ourselves in, let others run, count out. */
static void
hold(int d)
{
    int i;

    if (atomic_fetch_add(&sh->holders[d], 1) != 0)
        atomic_fetch_add(&sh->overlaps, 1);
    for (i = 0; i < 20; i++)
        sched_yield();
    atomic_fetch_sub(&sh->holders[d], 1);
}

/* One virtlockd guest: register, acquire disk d, hold, release; then exit,
 * which closes its connection to virtlockd. */
static int
vl_guest(int d)
{
    struct vlm_manager man = {.driver = drv};
    struct vlm_param p[5];
    char path[128], name[32];
    int r, fd = -1, i;

    memset(p, 0, sizeof(p));
    snprintf(name, sizeof(name), "gc-race-%d", (int)getpid());
    p[0].type = P_UUID, p[0].key = "uuid";
    for (i = 0; i < 16; i++)
        p[0].value.uuid[i] = (unsigned char)(getpid() >> (i % 4 * 8));
    p[1].type = P_STRING, p[1].key = "name", p[1].value.str = name;
    p[2].type = P_UINT, p[2].key = "id", p[2].value.iv = 1;
    p[3].type = P_UINT, p[3].key = "pid", p[3].value.iv = (int)getpid();
    p[4].type = P_CSTRING, p[4].key = "uri", p[4].value.cstr = "qemu:///system";
    disk_path(d, path, sizeof(path));
    if (drv->drvNew(&man, 0, 5, p, 1) < 0 ||
        drv->drvAddResource(&man, DISK, path, 0, NULL, 0) < 0)
        return 2;
    r = drv->drvAcquire(&man, NULL, 0, 0, &fd);
    if (r < 0) {
        drv->drvFree(&man);
        return 1; /* busy (or an error: told apart by the counts) */
    }
    hold(d);
    r = drv->drvRelease(&man, NULL, 0);
    drv->drvFree(&man);
    return r < 0 ? 3 : 0;
}

static void
vl_worker(unsigned seed)
{
    int st;
    pid_t pid;

    while (running()) {
        int d = (int)(rand_r(&seed) % NDISKS);

        pid = fork();
        if (pid == 0)
            _exit(vl_guest(d));
        if (pid < 0 || waitpid(pid, &st, 0) != pid) {
            fail("fork", -errno);
            return;
        }
        if (WIFEXITED(st) && WEXITSTATUS(st) == 0)
            atomic_fetch_add(&sh->vl_taken, 1);
        else if (WIFEXITED(st) && WEXITSTATUS(st) == 1)
            atomic_fetch_add(&sh->vl_busy, 1);
        else
            atomic_fetch_add(&sh->vl_errors, 1);
    }
}

static void
lk_worker(unsigned seed)
{
    char keys[NDISKS][LOCKD_KEY_SIZE], path[128];
    lockd_space *s = NULL;
    int d, r;

    if ((r = lockd_space_open(space_dir, LOCKD_OPEN_VERBATIM, &s)) < 0) {
        fail("lockd_space_open", r);
        return;
    }
    for (d = 0; d < NDISKS; d++) {
        disk_path(d, path, sizeof(path));
        if ((r = lockd_space_key(s, path, keys[d])) < 0) {
            fail("lockd_space_key", r);
            return;
        }
    }
    while (running()) {
        const char *k[1];
        lockd_lease *l = NULL;

        d = (int)(rand_r(&seed) % NDISKS);
        k[0] = keys[d];
        r = lockd_acquire(s, 1, k, NULL, LOCKD_TRY, &l);
        if (r == -EAGAIN || r == -EINPROGRESS) {
            atomic_fetch_add(&sh->lk_busy, 1);
            continue;
        }
        if (r < 0) {
            fail("lockd_acquire", r);
            return;
        }
        atomic_fetch_add(&sh->lk_taken, 1);
        hold(d);
        if ((r = lockd_lease_release(l)) < 0) {
            fail("lockd_lease_release", r);
            return;
        }
    }
    lockd_space_close(s);
}

static void
gc_worker(void)
{
    lockd_space *s = NULL;
    uint64_t removed;
    int r;

    if ((r = lockd_space_open(space_dir, LOCKD_OPEN_VERBATIM, &s)) < 0) {
        fail("lockd_space_open", r);
        return;
    }
    while (running()) {
        r = lockd_gc_ex(s, 0, NULL, NULL, &removed, NULL, NULL, NULL);
        if (r < 0) {
            fail("lockd_gc_ex", r);
            return;
        }
        atomic_fetch_add(&sh->gc_runs, 1);
        atomic_fetch_add(&sh->gc_removed, (long)removed);
    }
    lockd_space_close(s);
}

static void
check(int cond, const char *what)
{
    printf("%s - %s\n", cond ? "ok" : "not ok", what);
}

int
main(int argc, char **argv)
{
    pid_t pids[VL_WORKERS + LK_WORKERS + 1];
    int n = 0, i, failed = 0;
    int (*init)(void);
    void *h;

    if (argc != 5) {
        fprintf(stderr, "usage: gc-race PLUGIN.so CONF LOCKSPACE SECONDS\n");
        return 2;
    }
    space_dir = argv[3];
    h = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    drv = h ? dlsym(h, "virLockDriverImpl") : NULL;
    /* libvirtd has set libvirt up before it loads a lock plugin. */
    init = h ? (int (*)(void))dlsym(h, "virInitialize") : NULL;
    if (!drv || !init || init() < 0 || drv->drvInit(1000000, argv[2], 0) < 0) {
        fprintf(stderr, "gc-race: cannot load %s: %s\n", argv[1], h ? "init" : dlerror());
        printf("not ok - libvirt's lock plugin loads\n");
        return 1;
    }
    sh = mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1,
              0);
    if (sh == MAP_FAILED)
        return 2;
    memset(sh, 0, sizeof(*sh));
    clock_gettime(CLOCK_MONOTONIC, &end);
    end.tv_sec += atoi(argv[4]);
    fflush(NULL);
    for (i = 0; i < VL_WORKERS + LK_WORKERS + 1; i++) {
        pid_t pid = fork();

        if (pid == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            if (i < VL_WORKERS)
                vl_worker((unsigned)i + 1);
            else if (i < VL_WORKERS + LK_WORKERS)
                lk_worker((unsigned)i + 1);
            else
                gc_worker();
            _exit(0);
        }
        if (pid > 0)
            pids[n++] = pid;
    }
    for (i = 0; i < n; i++)
        waitpid(pids[i], NULL, 0);
    drv->drvDeinit();

    printf("# virtlockd: %ld taken, %ld busy, %ld errors; lockd: %ld taken, %ld busy; "
           "gc: %ld runs, %ld removed; %ld overlaps\n",
           sh->vl_taken, sh->vl_busy, sh->vl_errors, sh->lk_taken, sh->lk_busy,
           sh->gc_runs, sh->gc_removed, sh->overlaps);
    if (sh->errors)
        printf("# first error: %s\n", sh->error);
    check(sh->errors == 0 && sh->vl_errors == 0, "no call failed but for busy");
    check(sh->vl_taken >= 50, "virtlockd took the disks (at least 50 times)");
    check(sh->lk_taken >= 50, "lockd took the disks (at least 50 times)");
    check(sh->gc_removed >= 20,
          "gc removed lease files virtlockd and lockd left (at least 20)");
    check(sh->overlaps == 0, "no disk was ever held by two at once");
    failed = sh->errors || sh->vl_errors || sh->vl_taken < 50 || sh->lk_taken < 50 ||
             sh->gc_removed < 20 || sh->overlaps;
    return failed;
}
