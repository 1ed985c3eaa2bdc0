/* SPDX-License-Identifier: MIT */
/*
 * lose-lease: make the helper's lease on a file lost, for test/check-libvirt.
 *
 * usage: lose-lease HELPER-PID LEASE-FILE
 *
 * Takes a copy of every descriptor of process HELPER-PID that refers to
 * LEASE-FILE (pidfd_getfd(2): root, or ptrace rights) and removes the OFD
 * lock through the copy: the lock belongs to the open file description, so
 * the helper's fd is left open and without its lock, which is what a
 * network filesystem that lost the lock leaves behind.  The helper finds
 * it at its next check and runs the owner's action on loss.
 * Exit status 0 (at least one unlocked), 1 (no such fd), 2 (error).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

int
main(int argc, char **argv)
{
    struct flock fl = {.l_type = F_UNLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 1};
    char dirpath[64];
    struct stat want;
    struct dirent *e;
    int pidfd, done = 0;
    pid_t pid;
    DIR *d;

    if (argc != 3) {
        fprintf(stderr, "usage: lose-lease HELPER-PID LEASE-FILE\n");
        return 2;
    }
    pid = (pid_t)atoi(argv[1]);
    if (pid <= 0 || stat(argv[2], &want) < 0) {
        perror(argv[2]);
        return 2;
    }
    pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
    snprintf(dirpath, sizeof(dirpath), "/proc/%d/fd", (int)pid);
    d = opendir(dirpath);
    if (pidfd < 0 || !d) {
        perror(dirpath);
        return 2;
    }
    while ((e = readdir(d))) {
        char path[sizeof(dirpath) + 256 + 2];
        struct stat st;
        int fd;

        snprintf(path, sizeof(path), "%s/%s", dirpath, e->d_name);
        if (e->d_name[0] == '.' || stat(path, &st) < 0 || st.st_dev != want.st_dev ||
            st.st_ino != want.st_ino)
            continue;
        fd = (int)syscall(SYS_pidfd_getfd, pidfd, atoi(e->d_name), 0);
        if (fd < 0 || fcntl(fd, F_OFD_SETLK, &fl) < 0) {
            perror("pidfd_getfd/F_OFD_SETLK");
            return 2;
        }
        close(fd);
        done++;
    }
    closedir(d);
    close(pidfd);
    if (!done)
        fprintf(stderr, "lose-lease: process %d holds no fd of %s\n", (int)pid, argv[2]);
    return done ? 0 : 1;
}
