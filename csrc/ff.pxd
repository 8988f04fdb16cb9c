# Mirrors the C headers in csrc/; no logic here.
from libc.stdint cimport int32_t, int64_t
from posix.types cimport pid_t


cdef extern from "ff_spawn.h":
    struct ff_rlimit:
        int resource
        unsigned long long soft
        unsigned long long hard

    struct ff_spawn_opts:
        const int *join_fds
        int n_join
        const int *close_fds
        int n_close
        int stdio[3]
        const ff_rlimit *rlimits
        int n_rlimits
        int new_session
        int reset_signals
        int gid
        int uid
        int pdeathsig

    pid_t ff_spawn(const ff_spawn_opts *opts, int *step) nogil
    const char *ff_spawn_step_name(int step)


cdef extern from "ff_table.h":
    enum ff_state:
        FF_FREE, FF_SPAWNING, FF_IDLE, FF_BUSY, FF_DRAINING, FF_DEAD, FF_NSTATES
    enum ff_kind:
        FF_WARM, FF_SPARE

    struct ff_table:
        int32_t n_nodes

    int ff_table_init(ff_table *t)
    void ff_table_free(ff_table *t)
    int32_t ff_table_slot_new(ff_table *t)
    int ff_table_slot_release(ff_table *t, int32_t slot)
    int32_t ff_table_add(ff_table *t, int32_t slot)
    int ff_table_set_state(ff_table *t, int32_t id, int state, int kind, double now)
    int32_t ff_table_acquire(ff_table *t, int32_t slot, int *kind)
    int32_t ff_table_pop_expired(ff_table *t, int32_t slot, int kind, double cutoff)
    int ff_table_state(const ff_table *t, int32_t id)
    int ff_table_count(const ff_table *t, int32_t slot, int state)
    int ff_table_idle(const ff_table *t, int32_t slot, int kind)
    int ff_table_transition_ok(int frm, int to)


cdef extern from "ff_cgroup.h":
    int64_t ff_cpu_quota_us(int64_t memory_mb, int64_t period_us, int64_t ncpus)
    int64_t ff_zygote_memory_bytes(int64_t memory_mb)
    int ff_write_at0(int fd, const char *buf, int len) nogil
    int ff_read_i64(int fd, int64_t *out) nogil
    int ff_read_keyed_i64(int fd, const char *key, int64_t *out) nogil
    int ff_read_path_i64(const char *path, int64_t *out) nogil
    int ff_remove_tree(char *path, size_t cap, int attempts, long retry_ns) nogil


cdef extern from "ff_sandbox.h":
    int ff_unshare(int flags)
    int ff_setns(int fd, int nstype)
    int ff_mount(const char *source, const char *target, const char *fstype,
                 unsigned long flags, const char *data)
    int ff_readonly_tree(const char *path)
    int ff_enter_userns(unsigned int inside_uid, unsigned int outside_uid,
                        unsigned int inside_gid, unsigned int outside_gid)
    int ff_drop_capabilities()
    int ff_loopback_up()
    int ff_seccomp_install()
    int ff_seccomp_length()
    const unsigned long ff_clone_ns_flags
