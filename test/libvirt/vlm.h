/* SPDX-License-Identifier: MIT */
/*
 * vlm.h: libvirt's lock-driver plugin ABI (libvirt 9.0.0), for the tests
 * that drive a plugin as libvirtd does: fake-libvirt.c (lockd's plugin) and
 * gc-race.c (libvirt's own, talking to virtlockd).
 */
#ifndef LOCKD_TEST_VLM_H
#define LOCKD_TEST_VLM_H

#include <stddef.h>

/* As declared in lockd-libvirt.c (flags and types documented there). */
struct vlm_param {
    int type;
    const char *key;
    union {
        int iv;
        unsigned long long ul;
        char *str;
        const char *cstr;
        unsigned char uuid[16];
    } value;
};
struct vlm_manager {
    void *driver;
    void *privateData;
};
struct vlm_driver {
    unsigned int version, flags;
    int (*drvInit)(unsigned int, const char *, unsigned int);
    int (*drvDeinit)(void);
    int (*drvNew)(struct vlm_manager *, unsigned int, size_t, struct vlm_param *,
                  unsigned int);
    void (*drvFree)(struct vlm_manager *);
    int (*drvAddResource)(struct vlm_manager *, unsigned int, const char *, size_t,
                          struct vlm_param *, unsigned int);
    int (*drvAcquire)(struct vlm_manager *, const char *, unsigned int, int, int *);
    int (*drvRelease)(struct vlm_manager *, char **, unsigned int);
    int (*drvInquire)(struct vlm_manager *, char **, unsigned int);
};
enum { P_STRING, P_CSTRING, P_INT, P_LONG, P_UINT, P_ULONG, P_DOUBLE, P_UUID };
#define DISK 0
#define LEASE 1
#define READONLY 1u
#define SHARED 2u
#define REG_ONLY 1u
#define RESTRICT 2u

#endif
