/* SPDX-License-Identifier: MIT */
/*
 * bench-list: `lockdctl list` of a lockspace of 100,000 lease files, next to
 * the system calls a listing cannot avoid.
 *
 *   floor L  one pass in this process: readdir of the directory, and per
 *            file openat(O_RDONLY|O_NOFOLLOW), fstat, F_OFD_GETLK, close.
 *   list     `lockdctl --dir DIR list > /dev/null`, the whole program: its
 *            exec, the walk (an O_PATH look and a reopen per file, so that
 *            nothing planted is ever opened; records read for the files
 *            that have one), the sorted table.  Goals: at most 3 s, and at
 *            most 4 times floor L.
 *
 * A child holds 64 of the leases exclusively and 32 shared (through the
 * library, so the exclusive ones carry holder records, as in a lockspace
 * in use) while both are timed.  The files are made once, zero bytes each,
 * never more than one open at a time; each figure is the median of
 * LIST_ROUNDS runs, floor and list alternating.  The program to run is
 * ./lockdctl, or $LOCKD_BENCH_LOCKDCTL.
 */
#include "bench.h"

#include "lockd.h"

#include <dirent.h>
#include <sys/wait.h>

#define LIST_FILES 100000
#define LIST_FILES_TEXT "100,000"
#define LIST_ROUNDS 5
#define HELD_EXCLUSIVE 64
#define HELD_SHARED 32
#define GOAL_S 3.0
#define GOAL_RATIO 4.0

static char (*keys)[LOCKD_KEY_SIZE];

/* The lease files, as lockd would name the disks /bench/list/N. */
static void
make_files(int dfd)
{
    char disk[64];
    size_t i;

    keys = calloc(LIST_FILES, sizeof(*keys));
    if (!keys)
        BENCH_DIE("out of memory");
    for (i = 0; i < LIST_FILES; i++) {
        int fd, len = snprintf(disk, sizeof(disk), "/bench/list/%zu", i);

        BENCH_OK(lockd_key_resource(disk, (size_t)len, keys[i]));
        fd = openat(dfd, keys[i], O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW,
                    0600);
        BENCH_SYS(fd);
        close(fd);
    }
}

/* A child that holds some leases until *ret_release is closed. */
static pid_t
holder_start(const char *dir, int *ret_release)
{
    const char *ex[HELD_EXCLUSIVE], *sh[HELD_SHARED];
    int ready[2], release[2], modes[HELD_SHARED];
    lockd_lease *a, *b;
    lockd_space *space;
    pid_t pid;
    size_t i;
    char c;

    BENCH_SYS(pipe2(ready, O_CLOEXEC));
    BENCH_SYS(pipe2(release, O_CLOEXEC));
    pid = fork();
    BENCH_SYS(pid);
    if (pid == 0) {
        close(ready[0]);
        close(release[1]); /* or its read never sees the end */
        for (i = 0; i < HELD_EXCLUSIVE; i++)
            ex[i] = keys[i * (LIST_FILES / HELD_EXCLUSIVE)];
        for (i = 0; i < HELD_SHARED; i++) {
            sh[i] = keys[i * (LIST_FILES / HELD_SHARED) + 1];
            modes[i] = LOCKD_SHARED;
        }
        if (lockd_space_open(dir, 0, &space) < 0 ||
            lockd_acquire(space, HELD_EXCLUSIVE, ex, NULL, LOCKD_TRY, &a) < 0 ||
            lockd_acquire(space, HELD_SHARED, sh, modes, LOCKD_TRY, &b) < 0 ||
            write(ready[1], "x", 1) != 1)
            _exit(1);
        while (read(release[0], &c, 1) < 0 && errno == EINTR)
            ;
        _exit(0);
    }
    close(ready[1]);
    close(release[0]);
    if (read(ready[0], &c, 1) != 1)
        BENCH_DIE("the holder did not take its leases");
    close(ready[0]);
    *ret_release = release[1];
    return pid;
}

/* Floor L: one pass over the directory; returns seconds. */
static double
floor_round(const char *dir)
{
    struct flock fl;
    struct dirent *de;
    struct stat st;
    size_t held = 0, n = 0;
    int64_t t0 = bench_now_ns();
    DIR *d = opendir(dir);

    if (!d)
        BENCH_DIE("%s: %s", dir, strerror(errno));
    while ((de = readdir(d))) {
        int fd;

        if (!lockd_key_valid(de->d_name))
            continue;
        fd = openat(dirfd(d), de->d_name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
        BENCH_SYS(fd);
        BENCH_SYS(fstat(fd, &st));
        fl = (struct flock){.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_len = 1};
        BENCH_SYS(fcntl(fd, F_OFD_GETLK, &fl));
        held += fl.l_type != F_UNLCK;
        close(fd);
        n++;
    }
    closedir(d);
    if (n != LIST_FILES || held != HELD_EXCLUSIVE + HELD_SHARED)
        BENCH_DIE("floor saw %zu files, %zu held", n, held);
    return (double)(bench_now_ns() - t0) / 1e9;
}

/* `lockdctl --dir DIR list`, output to a file; returns seconds. */
static double
list_round(const char *ctl, const char *dir, const char *out)
{
    char *argv[] = {(char *)ctl, "--dir", (char *)dir, "list", NULL};
    int64_t t0 = bench_now_ns();
    int st;
    pid_t pid;

    fflush(NULL);
    pid = fork();
    BENCH_SYS(pid);
    if (pid == 0) {
        int fd = open(out, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);

        if (fd < 0 || dup2(fd, 1) < 0)
            _exit(126);
        execv(ctl, argv);
        _exit(127);
    }
    while (waitpid(pid, &st, 0) < 0)
        if (errno != EINTR)
            BENCH_DIE("waitpid: %s", strerror(errno));
    t0 = bench_now_ns() - t0;
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
        BENCH_DIE("%s list: status %d", ctl, st);
    return (double)t0 / 1e9;
}

/* The listing ends with the totals of what the child holds. */
static void
check_output(const char *out)
{
    char want[128], buf[256];
    FILE *f = fopen(out, "re");
    long end;

    snprintf(want, sizeof(want), "%d lease files: %d held, %d free\n", LIST_FILES,
             HELD_EXCLUSIVE + HELD_SHARED, LIST_FILES - HELD_EXCLUSIVE - HELD_SHARED);
    if (!f || fseek(f, 0, SEEK_END) < 0 || (end = ftell(f)) < (long)strlen(want) ||
        fseek(f, end - (long)strlen(want), SEEK_SET) < 0 || !fgets(buf, sizeof(buf), f) ||
        strcmp(buf, want) != 0)
        BENCH_DIE("%s does not end with \"%s\"", out, want);
    fclose(f);
}

int
main(int argc, char **argv)
{
    const char *ctl = getenv("LOCKD_BENCH_LOCKDCTL"), *dir, *out;
    double fl[LIST_ROUNDS], li[LIST_ROUNDS], fs, ls;
    lockd_space *space;
    int64_t t0;
    int release, r, met;
    pid_t holder;
    char label[128];

    if (!ctl || !*ctl)
        ctl = "./lockdctl";
    if (access(ctl, X_OK) < 0) {
        fprintf(stderr, "%s: %s (make lockdctl)\n", ctl, strerror(errno));
        return 1;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    bench_scratch_make();
    bench_header("bench-list: lockdctl list against the bare system calls", argc, argv);
    dir = bench_path("space");
    out = bench_path("list.out");
    BENCH_OK(lockd_space_open(dir, LOCKD_OPEN_CREATE, &space));
    t0 = bench_now_ns();
    make_files(lockd_space_fd(space));
    printf("# %d lease files made in %.1f s\n", LIST_FILES,
           (double)(bench_now_ns() - t0) / 1e9);
    lockd_space_close(space);
    holder = holder_start(dir, &release);
    for (r = 0; r < LIST_ROUNDS; r++) {
        fl[r] = floor_round(dir);
        li[r] = list_round(ctl, dir, out);
    }
    check_output(out);
    close(release);
    while (waitpid(holder, NULL, 0) < 0 && errno == EINTR)
        ;
    fs = bench_median(fl, LIST_ROUNDS);
    ls = bench_median(li, LIST_ROUNDS);
    met = ls <= GOAL_S && ls / fs <= GOAL_RATIO;
    snprintf(label, sizeof(label), "floor L: readdir + open + fstat + GETLK + close (%d)",
             LIST_FILES);
    printf("%-*s %10.2f s\n", BENCH_LABEL_WIDTH, label, fs);
    snprintf(label, sizeof(label), "list %s lease files (%d held)", LIST_FILES_TEXT,
             HELD_EXCLUSIVE + HELD_SHARED);
    printf("%-*s %10.2f s  %5.2fx floor L  goal <= %.0f s, <= %.2fx  %s\n",
           BENCH_LABEL_WIDTH, label, ls, ls / fs, GOAL_S, GOAL_RATIO,
           met ? "met" : "MISSED");
    printf("# %d goal%s missed\n", !met, met ? "s" : "");
    free(keys);
    bench_cleanup();
    return 0;
}
