/* ff_cgroup: the per-invocation cgroup work on the hot path, through
 * descriptors opened once when a cgroup is created. Returns 0 or -errno. */
#ifndef FF_CGROUP_H
#define FF_CGROUP_H

#include <stddef.h>
#include <stdint.h>

#define FF_VCPU_MB 1769       /* one vCPU per 1769 MB, as on Lambda */
#define FF_V1_MIN_QUOTA_US 1000

/* CPU quota in microseconds per period for a memory size, at least the v1
 * minimum, at most ncpus whole CPUs. */
int64_t ff_cpu_quota_us(int64_t memory_mb, int64_t period_us, int64_t ncpus);

/* Memory limit of a zygote's cgroup: the function's size plus headroom for
 * the pages its instances share with it. */
int64_t ff_zygote_memory_bytes(int64_t memory_mb);

int ff_write_at0(int fd, const char *buf, int len);
/* The first decimal integer in the file ("max" reads as INT64_MAX). */
int ff_read_i64(int fd, int64_t *out);
/* The integer after `key ` at a line start ("oom_kill 3", "usage_usec 12"). */
int ff_read_keyed_i64(int fd, const char *key, int64_t *out);

/* The first integer of the file at `path` (as ff_read_i64): 0 or -errno. */
int ff_read_path_i64(const char *path, int64_t *out);

/* Kill every task in the cgroup tree at `path` and remove its directories,
 * deepest first. A v1 freezer cgroup is thawed first (frozen tasks die only
 * once thawed); a directory still busy with tasks on their way out is tried
 * again after `retry_ns`, up to `attempts` times, since nothing signals their
 * exit. `path` is a buffer of `cap` bytes holding the root; on failure it
 * holds the directory that could not be removed. Returns 0 (also when the
 * root is already gone) or -errno. Blocks: call it without the GIL. */
int ff_remove_tree(char *path, size_t cap, int attempts, long retry_ns);

#endif
