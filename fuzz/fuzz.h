/* SPDX-License-Identifier: MIT */
/*
 * fuzz.h: what the libFuzzer targets share, kept once instead of in each
 * target: libFuzzer's entry points, and finding the corpus directory so that
 * a target can seed it when it is empty.  Include it after the .c file the
 * target builds in (lockd.c or lockd-helper.c), which sets _GNU_SOURCE.
 */
#ifndef LOCKD_FUZZ_H
#define LOCKD_FUZZ_H

#include <dirent.h>
#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* libFuzzer's first argument that is not a flag is the corpus directory. */
static inline const char *
corpus_dir(int argc, char **argv)
{
    for (int i = 1; i < argc; i++)
        if (argv[i][0] != '-')
            return argv[i];
    return NULL;
}

/* Whether the directory path holds nothing but dot files; 0 when it cannot
 * be opened. */
static inline int
dir_empty(const char *path)
{
    DIR *d = opendir(path);
    struct dirent *e;
    int empty = 1;

    if (!d)
        return 0;
    while (empty && (e = readdir(d)))
        empty = e->d_name[0] == '.';
    closedir(d);
    return empty;
}

#endif
