/* ff_spawn: fork an instance from the calling zygote and set it up before
 * anything of the user's runs again. Between fork() and the return to the
 * caller only async-signal-safe calls are made; a failing step is reported to
 * the parent over a pipe as (step, errno) and the child _exit()s. */
#ifndef FF_SPAWN_H
#define FF_SPAWN_H

#include <sys/types.h>

enum ff_spawn_step {
    FF_STEP_NONE = 0,
    FF_STEP_PIPE,
    FF_STEP_FORK,
    FF_STEP_CGROUP,
    FF_STEP_SETSID,
    FF_STEP_RLIMIT,
    FF_STEP_STDIO,
    FF_STEP_CLOSE,
    FF_STEP_SIGNALS,
    FF_STEP_SETGROUPS,
    FF_STEP_SETGID,
    FF_STEP_SETUID,
    FF_STEP_PDEATHSIG,
    FF_STEP_PARENT_GONE,
    FF_STEP_REPORT,
    FF_STEP_COUNT
};

struct ff_rlimit {
    int resource;
    unsigned long long soft;
    unsigned long long hard;
};

struct ff_spawn_opts {
    const int *join_fds;      /* cgroup v1 `tasks` / v2 `cgroup.procs`, opened O_WRONLY: the child writes "0" */
    int n_join;
    const int *close_fds;     /* fastfaas's own descriptors, closed in the child */
    int n_close;
    int stdio[3];             /* descriptors for 0, 1, 2 in the child; -1 leaves one as it is */
    const struct ff_rlimit *rlimits;
    int n_rlimits;
    int new_session;          /* setsid() */
    int reset_signals;        /* default dispositions (SIGPIPE, SIGXFSZ ignored, as CPython does), empty mask */
    int gid;                  /* -1 keeps the group; otherwise setgroups(0), setgid */
    int uid;                  /* -1 keeps the user */
    int pdeathsig;            /* 0: none; set after credential changes, which clear it */
};

/* In the parent: the child's pid (> 0), or -errno with *step naming what failed
 * (in the parent or in the child, which has then been reaped). In the child: 0. */
pid_t ff_spawn(const struct ff_spawn_opts *opts, int *step);

const char *ff_spawn_step_name(int step);

#endif
