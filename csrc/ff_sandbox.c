#define _GNU_SOURCE
#include "ff_sandbox.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/audit.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <net/if.h>
#include <sched.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

int ff_unshare(int flags)
{
    return unshare(flags) < 0 ? -errno : 0;
}

int ff_setns(int fd, int nstype)
{
    return setns(fd, nstype) < 0 ? -errno : 0;
}

#ifndef SYS_mount_setattr
#define SYS_mount_setattr 442 /* the same on x86_64 and aarch64 */
#endif
#ifndef AT_RECURSIVE
#define AT_RECURSIVE 0x8000
#endif
#define FF_MOUNT_ATTR_RDONLY 0x00000001

struct ff_mount_attr { /* struct mount_attr, Linux 5.12 */
    unsigned long long attr_set, attr_clr, propagation, userns_fd;
};

int ff_readonly_tree(const char *path)
{
    struct ff_mount_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.attr_set = FF_MOUNT_ATTR_RDONLY;
    if (syscall(SYS_mount_setattr, AT_FDCWD, path, AT_RECURSIVE, &attr, sizeof attr) < 0)
        return -errno;
    return 0;
}

int ff_mount(const char *source, const char *target, const char *fstype,
             unsigned long flags, const char *data)
{
    return mount(source, target, fstype, flags, data) < 0 ? -errno : 0;
}

static int write_all(int fd, const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, buf, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

static int write_file(const char *path, const char *text)
{
    int rc, fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    rc = write_all(fd, text, strlen(text));
    close(fd);
    return rc;
}

int ff_enter_userns(uid_t inside_uid, uid_t outside_uid, gid_t inside_gid, gid_t outside_gid)
{
    /* Become the unprivileged outside user first (which clears every
     * capability in the host's namespaces), then make the namespace: an
     * unprivileged process may map its own ids, and only those. A map file
     * judges the writer by the namespace it was opened in, so the parent's
     * privileges could not be borrowed here anyway. */
    char line[64];
    int rc;
    if (setgroups(0, NULL) < 0 || setresgid(outside_gid, outside_gid, outside_gid) < 0 ||
        setresuid(outside_uid, outside_uid, outside_uid) < 0)
        return -errno;
    /* The uid change made us non-dumpable, and /proc/self/ root's: undo that
     * for the map writes (the caller sets dumpable 0 again at the end). */
    if (prctl(PR_SET_DUMPABLE, 1, 0, 0, 0) < 0)
        return -errno;
    if (unshare(CLONE_NEWUSER) < 0)
        return -errno;
    if ((rc = write_file("/proc/self/setgroups", "deny")) < 0)
        return rc;
    snprintf(line, sizeof line, "%u %u 1\n", (unsigned)inside_gid, (unsigned)outside_gid);
    if ((rc = write_file("/proc/self/gid_map", line)) < 0)
        return rc;
    snprintf(line, sizeof line, "%u %u 1\n", (unsigned)inside_uid, (unsigned)outside_uid);
    if ((rc = write_file("/proc/self/uid_map", line)) < 0)
        return rc;
    if (setresgid(inside_gid, inside_gid, inside_gid) < 0 ||
        setresuid(inside_uid, inside_uid, inside_uid) < 0)
        return -errno;
    return 0;
}

int ff_drop_capabilities(void)
{
    struct __user_cap_header_struct hdr = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct data[2];
    int cap;

    /* The bounding set first: dropping from it needs CAP_SETPCAP, which goes next. */
    for (cap = 0; cap <= 63; cap++)
        if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0 && errno != EINVAL)
            return -errno;
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0 && errno != EINVAL)
        return -errno;
    memset(data, 0, sizeof data);
    if (syscall(SYS_capset, &hdr, data) < 0)
        return -errno;
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
        return -errno;
    return 0;
}

int ff_loopback_up(void)
{
    struct ifreq ifr;
    int rc = 0;
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0)
        return -errno;
    memset(&ifr, 0, sizeof ifr);
    strncpy(ifr.ifr_name, "lo", IFNAMSIZ - 1);
    if (ioctl(s, SIOCGIFFLAGS, &ifr) < 0) {
        rc = -errno;
    } else {
        ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
        if (ioctl(s, SIOCSIFFLAGS, &ifr) < 0)
            rc = -errno;
    }
    close(s);
    return rc;
}

/* ---- seccomp ----
 * A deny list, not an allow list: a function may use any ordinary system call
 * (a Python program's set is large and grows with its libraries), and what it
 * has no business doing answers EPERM, so that libraries see an error and not
 * a crash. clone3 answers ENOSYS (its flags sit in memory, out of the filter's
 * reach) and glibc falls back to clone, whose flags argument the filter reads. */

#if defined(__x86_64__)
#define FF_AUDIT_ARCH AUDIT_ARCH_X86_64
#define FF_X32_BIT 0x40000000u
#elif defined(__aarch64__)
#define FF_AUDIT_ARCH AUDIT_ARCH_AARCH64
#else
#error "fastfaas's seccomp filter knows x86_64 and aarch64"
#endif

const unsigned long ff_clone_ns_flags = CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC |
                                        CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET |
                                        CLONE_NEWCGROUP;

static const int denied[] = {
    SYS_ptrace, SYS_process_vm_readv, SYS_process_vm_writev, SYS_kcmp,
    SYS_mount, SYS_umount2, SYS_pivot_root, SYS_chroot,
#ifdef SYS_open_tree
    SYS_open_tree, SYS_move_mount, SYS_fsopen, SYS_fsconfig, SYS_fsmount, SYS_fspick,
#endif
#ifdef SYS_mount_setattr
    SYS_mount_setattr,
#endif
    SYS_kexec_load,
#ifdef SYS_kexec_file_load
    SYS_kexec_file_load,
#endif
    SYS_bpf, SYS_perf_event_open, SYS_userfaultfd,
    SYS_keyctl, SYS_add_key, SYS_request_key,
    SYS_init_module, SYS_finit_module, SYS_delete_module,
    SYS_reboot, SYS_swapon, SYS_swapoff, SYS_acct, SYS_quotactl, SYS_syslog,
    SYS_unshare, SYS_setns,
    SYS_name_to_handle_at, SYS_open_by_handle_at,
#ifdef SYS_io_uring_setup
    SYS_io_uring_setup, SYS_io_uring_enter, SYS_io_uring_register,
#endif
#if defined(__x86_64__)
    SYS_iopl, SYS_ioperm, SYS_lookup_dcookie, SYS_uselib, SYS_vhangup,
#endif
};

#define N_DENIED ((int)(sizeof denied / sizeof denied[0]))

static const unsigned families[] = {AF_UNIX, AF_INET, AF_INET6, AF_NETLINK};
#define FILTER_MAX (N_DENIED + 32) /* arch, nr, x32, clone3, clone, socket and the returns */

static struct sock_filter filter[FILTER_MAX];
static int filter_len = -1;

static void build_filter(void)
{
    /* The returns sit at the end ([ERRNO EPERM] [ERRNO ENOSYS]); the compares
     * that lead there are patched once their positions are known (BPF jumps
     * are forward and relative). */
    struct sock_filter *f = filter;
    int to_eperm[N_DENIED + 2], n_eperm = 0, to_enosys;
    int to_allow_t[8], n_allow_t = 0, to_allow_f[2], n_allow_f = 0;
    int n = 0, i, allow_at, eperm_at, enosys_at;

    f[n++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS,
                                          offsetof(struct seccomp_data, arch));
    f[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, FF_AUDIT_ARCH, 1, 0);
    f[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM);
    f[n++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS,
                                          offsetof(struct seccomp_data, nr));
#ifdef FF_X32_BIT
    to_eperm[n_eperm++] = n;
    f[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, FF_X32_BIT, 0, 0);
#endif
    for (i = 0; i < N_DENIED; i++) {
        to_eperm[n_eperm++] = n;
        f[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (unsigned)denied[i], 0, 0);
    }
    to_enosys = n;
    f[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_clone3, 0, 0);
    /* clone: refuse the namespace flags (the first argument on x86_64 and aarch64). */
    f[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_clone, 0, 2);
    f[n++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS,
                                          offsetof(struct seccomp_data, args[0]));
    to_eperm[n_eperm++] = n;
    to_allow_f[n_allow_f++] = n;
    f[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K,
                                          (unsigned)ff_clone_ns_flags, 0, 0);
    /* socket, socketpair: the families a function has use for. Others (AF_VSOCK,
     * which no network namespace confines; AF_ALG; rare ones that load modules)
     * answer EAFNOSUPPORT. */
    f[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_socket, 1, 0);
    to_allow_f[n_allow_f++] = n;
    f[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_socketpair, 0, 0);
    f[n++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS,
                                          offsetof(struct seccomp_data, args[0]));
    for (i = 0; i < (int)(sizeof families / sizeof families[0]); i++) {
        to_allow_t[n_allow_t++] = n;
        f[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, families[i], 0, 0);
    }
    f[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EAFNOSUPPORT);
    allow_at = n;
    f[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
    eperm_at = n;
    f[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM);
    enosys_at = n;
    f[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ENOSYS);

    for (i = 0; i < n_eperm; i++)
        f[to_eperm[i]].jt = (unsigned char)(eperm_at - to_eperm[i] - 1);
    for (i = 0; i < n_allow_t; i++)
        f[to_allow_t[i]].jt = (unsigned char)(allow_at - to_allow_t[i] - 1);
    for (i = 0; i < n_allow_f; i++)
        f[to_allow_f[i]].jf = (unsigned char)(allow_at - to_allow_f[i] - 1);
    f[to_enosys].jt = (unsigned char)(enosys_at - to_enosys - 1);
    filter_len = n; /* < 256 instructions, so every jump fits its 8 bits */
}

int ff_seccomp_length(void)
{
    if (filter_len < 0)
        build_filter();
    return filter_len;
}

int ff_seccomp_install(void)
{
    struct sock_fprog prog;
    if (filter_len < 0)
        build_filter();
    prog.len = (unsigned short)filter_len;
    prog.filter = filter;
    if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0) < 0)
        return -errno;
    return 0;
}
