#define _GNU_SOURCE
#include "ff_spawn.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

static const char *const step_names[FF_STEP_COUNT] = {
    [FF_STEP_NONE] = "none",
    [FF_STEP_PIPE] = "pipe",
    [FF_STEP_FORK] = "fork",
    [FF_STEP_CGROUP] = "cgroup join",
    [FF_STEP_SETSID] = "setsid",
    [FF_STEP_RLIMIT] = "setrlimit",
    [FF_STEP_STDIO] = "stdio dup2",
    [FF_STEP_CLOSE] = "close descriptors",
    [FF_STEP_SIGNALS] = "reset signals",
    [FF_STEP_SETGROUPS] = "setgroups",
    [FF_STEP_SETGID] = "setgid",
    [FF_STEP_SETUID] = "setuid",
    [FF_STEP_PDEATHSIG] = "PR_SET_PDEATHSIG",
    [FF_STEP_PARENT_GONE] = "parent gone",
    [FF_STEP_REPORT] = "report",
};

const char *ff_spawn_step_name(int step)
{
    if (step < 0 || step >= FF_STEP_COUNT || step_names[step] == NULL)
        return "unknown";
    return step_names[step];
}

/* The child's report: which step failed and its errno. */
struct report {
    int step;
    int err;
};

static void child_fail(int fd, int step, int err)
{
    struct report r = {step, err};
    ssize_t n;
    do {
        n = write(fd, &r, sizeof r);
    } while (n < 0 && errno == EINTR);
    _exit(127);
}

static int child_setup(const struct ff_spawn_opts *o, pid_t parent, int *step)
{
    int i;

    /* 1. Cgroups first: everything below, and the user's code, is accounted there. */
    *step = FF_STEP_CGROUP;
    for (i = 0; i < o->n_join; i++)
        if (pwrite(o->join_fds[i], "0", 1, 0) < 0)
            return -errno;

    if (o->new_session) {
        *step = FF_STEP_SETSID;
        if (setsid() < 0)
            return -errno;
    }

    *step = FF_STEP_RLIMIT;
    for (i = 0; i < o->n_rlimits; i++) {
        struct rlimit rl = {(rlim_t)o->rlimits[i].soft, (rlim_t)o->rlimits[i].hard};
        if (setrlimit(o->rlimits[i].resource, &rl) < 0)
            return -errno;
    }

    *step = FF_STEP_STDIO;
    for (i = 0; i < 3; i++)
        if (o->stdio[i] >= 0 && o->stdio[i] != i && dup2(o->stdio[i], i) < 0)
            return -errno;

    *step = FF_STEP_CLOSE;
    for (i = 0; i < o->n_close; i++)
        if (o->close_fds[i] > 2)
            close(o->close_fds[i]); /* EBADF is harmless here */

    if (o->reset_signals) {
        struct sigaction sa;
        sigset_t none;
        int sig;
        *step = FF_STEP_SIGNALS;
        memset(&sa, 0, sizeof sa);
        for (sig = 1; sig < NSIG; sig++) {
            if (sig == SIGKILL || sig == SIGSTOP)
                continue;
            sa.sa_handler = (sig == SIGPIPE || sig == SIGXFSZ) ? SIG_IGN : SIG_DFL;
            sigaction(sig, &sa, NULL); /* EINVAL for the signals glibc reserves */
        }
        sigemptyset(&none);
        if (sigprocmask(SIG_SETMASK, &none, NULL) < 0)
            return -errno;
    }

    if (o->gid >= 0) {
        *step = FF_STEP_SETGROUPS;
        if (setgroups(0, NULL) < 0)
            return -errno;
        *step = FF_STEP_SETGID;
        if (setresgid(o->gid, o->gid, o->gid) < 0)
            return -errno;
    }
    if (o->uid >= 0) {
        *step = FF_STEP_SETUID;
        if (setresuid(o->uid, o->uid, o->uid) < 0)
            return -errno;
    }

    /* After the credential changes, which clear the parent-death signal. */
    if (o->pdeathsig > 0) {
        *step = FF_STEP_PDEATHSIG;
        if (prctl(PR_SET_PDEATHSIG, o->pdeathsig, 0, 0, 0) < 0)
            return -errno;
        *step = FF_STEP_PARENT_GONE;
        /* 0: the parent is outside this child's new PID namespace, where its
         * pid has no number; the control socket's EOF covers that case. */
        pid_t now = getppid();
        if (now != parent && now != 0)
            return -ESRCH;
    }
    *step = FF_STEP_NONE;
    return 0;
}

pid_t ff_spawn(const struct ff_spawn_opts *o, int *step)
{
    int fds[2];
    pid_t parent = getpid();
    pid_t pid;
    struct report r;
    ssize_t n;

    *step = FF_STEP_PIPE;
    if (pipe2(fds, O_CLOEXEC) < 0)
        return -errno;

    *step = FF_STEP_FORK;
    pid = fork();
    if (pid < 0) {
        int err = errno;
        close(fds[0]);
        close(fds[1]);
        return -err;
    }
    if (pid == 0) {
        int child_step = FF_STEP_NONE;
        int rc;
        close(fds[0]);
        rc = child_setup(o, parent, &child_step);
        if (rc < 0)
            child_fail(fds[1], child_step, -rc);
        close(fds[1]);
        return 0;
    }

    close(fds[1]);
    do {
        n = read(fds[0], &r, sizeof r);
    } while (n < 0 && errno == EINTR);
    close(fds[0]);
    if (n == 0) {
        *step = FF_STEP_NONE;
        return pid;
    }
    /* The child failed (or the report was cut short): reap it and say why. */
    while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
        ;
    if (n != (ssize_t)sizeof r) {
        *step = FF_STEP_REPORT;
        return -EPROTO;
    }
    *step = r.step;
    return -(r.err ? r.err : EIO);
}
