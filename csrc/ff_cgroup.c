#include "ff_cgroup.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

int64_t ff_cpu_quota_us(int64_t memory_mb, int64_t period_us, int64_t ncpus)
{
    int64_t quota, cap;
    if (memory_mb <= 0 || period_us <= 0 || ncpus <= 0)
        return -EINVAL;
    quota = (memory_mb * period_us + FF_VCPU_MB - 1) / FF_VCPU_MB;
    cap = ncpus * period_us;
    if (quota < FF_V1_MIN_QUOTA_US)
        quota = FF_V1_MIN_QUOTA_US;
    if (quota > cap)
        quota = cap;
    return quota;
}

int64_t ff_zygote_memory_bytes(int64_t memory_mb)
{
    int64_t headroom = memory_mb / 4;
    if (memory_mb <= 0)
        return -EINVAL;
    if (headroom < 64)
        headroom = 64;
    return (memory_mb + headroom) * 1024 * 1024;
}

int ff_write_at0(int fd, const char *buf, int len)
{
    ssize_t n;
    do {
        n = pwrite(fd, buf, (size_t)len, 0);
    } while (n < 0 && errno == EINTR);
    if (n < 0)
        return -errno;
    return n == len ? 0 : -EIO;
}

static int parse_i64(const char *p, const char *end, int64_t *out)
{
    int64_t v = 0;
    int any = 0;
    while (p < end && (*p == ' ' || *p == '\t'))
        p++;
    if (end - p >= 3 && memcmp(p, "max", 3) == 0) {
        *out = INT64_MAX;
        return 0;
    }
    while (p < end && *p >= '0' && *p <= '9') {
        int d = *p - '0';
        if (v > (INT64_MAX - d) / 10)
            return -ERANGE;
        v = v * 10 + d;
        p++;
        any = 1;
    }
    if (!any)
        return -EINVAL;
    *out = v;
    return 0;
}

static ssize_t read_all(int fd, char *buf, size_t cap)
{
    ssize_t n;
    do {
        n = pread(fd, buf, cap - 1, 0);
    } while (n < 0 && errno == EINTR);
    if (n < 0)
        return -errno;
    buf[n] = '\0';
    return n;
}

int ff_read_i64(int fd, int64_t *out)
{
    char buf[64];
    ssize_t n = read_all(fd, buf, sizeof buf);
    if (n < 0)
        return (int)n;
    return parse_i64(buf, buf + n, out);
}

int ff_read_path_i64(const char *path, int64_t *out)
{
    int rc, fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    rc = ff_read_i64(fd, out);
    close(fd);
    return rc;
}

int ff_read_keyed_i64(int fd, const char *key, int64_t *out)
{
    char buf[4096];
    size_t klen = strlen(key);
    ssize_t n = read_all(fd, buf, sizeof buf);
    const char *p = buf, *end;
    if (n < 0)
        return (int)n;
    end = buf + n;
    while (p < end) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        if (!eol)
            eol = end;
        if ((size_t)(eol - p) > klen && memcmp(p, key, klen) == 0 && p[klen] == ' ')
            return parse_i64(p + klen + 1, eol, out);
        p = eol + 1;
    }
    return -ENOENT;
}

/* SIGKILL every pid listed in dir/cgroup.procs (path[0..len) is the
 * directory; the buffer has room for the file name). A file that cannot be
 * read (its cgroup gone, or going) lists nobody: rmdir gives the verdict. */
static int kill_listed(char *path, size_t len, size_t cap)
{
    static const char procs[] = "/cgroup.procs";
    char buf[4096];
    long pid = 0;
    int fd, in_number = 0;
    ssize_t n;
    if (len + sizeof procs > cap)
        return -ENAMETOOLONG;
    memcpy(path + len, procs, sizeof procs);
    fd = open(path, O_RDONLY | O_CLOEXEC);
    path[len] = '\0';
    if (fd < 0)
        return 0;
    for (;;) {
        n = read(fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        for (ssize_t i = 0; i < n; i++) {
            if (buf[i] >= '0' && buf[i] <= '9') {
                if (pid <= INT_MAX)  /* a pid is an int: longer is not one */
                    pid = pid * 10 + (buf[i] - '0');
                in_number = 1;
            } else if (in_number) {
                if (pid > 0 && pid <= INT_MAX)
                    kill((pid_t)pid, SIGKILL);
                pid = 0;
                in_number = 0;
            }
        }
    }
    /* the last number, only if the file ended there (not cut by an error) */
    if (n == 0 && in_number && pid > 0 && pid <= INT_MAX)
        kill((pid_t)pid, SIGKILL);
    close(fd);
    return 0;
}

static void thaw(char *path, size_t len, size_t cap)
{
    static const char state[] = "/freezer.state";
    int fd;
    if (len + sizeof state > cap)
        return;
    memcpy(path + len, state, sizeof state);
    fd = open(path, O_WRONLY | O_CLOEXEC);
    path[len] = '\0';
    if (fd < 0)
        return;  /* not a freezer cgroup */
    if (write(fd, "THAWED", 6) < 0) {
        /* the tasks are killed all the same; rmdir then reports what is wrong */
    }
    close(fd);
}

static int remove_one(char *path, size_t len, size_t cap, int attempts, long retry_ns)
{
    struct timespec pause = { retry_ns / 1000000000L, retry_ns % 1000000000L };
    int rc;
    for (int attempt = 0;; attempt++) {
        rc = kill_listed(path, len, cap);
        if (rc < 0)
            return rc;
        if (rmdir(path) == 0 || errno == ENOENT)
            return 0;
        if (errno != EBUSY || attempt >= attempts - 1)
            return -errno;
        while (nanosleep(&pause, &pause) < 0 && errno == EINTR) {
        }
        pause.tv_sec = retry_ns / 1000000000L;
        pause.tv_nsec = retry_ns % 1000000000L;
    }
}

#define FF_TREE_DEPTH 32

static int remove_below(char *path, size_t len, size_t cap, int attempts, long retry_ns,
                        int depth)
{
    DIR *dir;
    struct dirent *e;
    int rc = 0;
    if (depth > FF_TREE_DEPTH)
        return -ELOOP;
    thaw(path, len, cap);  /* a frozen cgroup keeps the ones below it frozen */
    dir = opendir(path);
    if (dir == NULL) {
        if (errno == ENOENT)
            return 0;
        /* not listable: try to remove it as it is (rmdir says why not) */
        return remove_one(path, len, cap, attempts, retry_ns);
    }
    /* A child is removed only after readdir has returned it: the entries still
     * to come are untouched. */
    while (rc == 0 && (e = readdir(dir)) != NULL) {
        size_t n;
        int is_dir = e->d_type == DT_DIR;
        if (e->d_name[0] == '.' &&
            (e->d_name[1] == '\0' || (e->d_name[1] == '.' && e->d_name[2] == '\0')))
            continue;
        if (e->d_type == DT_UNKNOWN) {
            struct stat st;
            is_dir = fstatat(dirfd(dir), e->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
                     S_ISDIR(st.st_mode);
        }
        if (!is_dir)
            continue;
        n = strlen(e->d_name);
        if (len + 1 + n + 1 > cap) {
            rc = -ENAMETOOLONG;
            break;
        }
        path[len] = '/';
        memcpy(path + len + 1, e->d_name, n + 1);
        rc = remove_below(path, len + 1 + n, cap, attempts, retry_ns, depth + 1);
        if (rc == 0)
            path[len] = '\0';
    }
    closedir(dir);
    if (rc < 0)
        return rc;  /* path names the directory that failed */
    return remove_one(path, len, cap, attempts, retry_ns);
}

int ff_remove_tree(char *path, size_t cap, int attempts, long retry_ns)
{
    size_t len = strnlen(path, cap);
    if (len == 0 || len >= cap)
        return -EINVAL;
    if (attempts < 1)
        attempts = 1;
    if (retry_ns < 0)
        retry_ns = 0;
    return remove_below(path, len, cap, attempts, retry_ns, 0);
}
