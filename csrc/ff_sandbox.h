/* ff_sandbox: the kernel calls the strict isolation level is made of.
 * Each returns 0 or -errno; policy (which paths, which uid) is the caller's. */
#ifndef FF_SANDBOX_H
#define FF_SANDBOX_H

#include <sys/types.h>

int ff_unshare(int flags);
int ff_setns(int fd, int nstype);
int ff_mount(const char *source, const char *target, const char *fstype,
             unsigned long flags, const char *data);

/* Every mount at and under path read-only, in one call (mount_setattr,
 * Linux 5.12); -ENOSYS before that. */
int ff_readonly_tree(const char *path);

/* Become outside_uid/outside_gid (the caller must be root), then enter a new
 * user namespace in which those are inside_uid/inside_gid. Leaves the process
 * dumpable. */
int ff_enter_userns(uid_t inside_uid, uid_t outside_uid, gid_t inside_gid, gid_t outside_gid);

/* Drop every capability (effective, permitted, inheritable, ambient and the
 * bounding set) and set no_new_privs. */
int ff_drop_capabilities(void);

/* Bring the loopback interface of the current network namespace up. */
int ff_loopback_up(void);

/* Install the seccomp filter (built once, at load time). */
int ff_seccomp_install(void);
int ff_seccomp_length(void);

/* clone() flags the filter refuses: the namespace ones. */
extern const unsigned long ff_clone_ns_flags;

#endif
