#include "ff_cgroup.h"

#include <errno.h>
#include <stdint.h>
#include <string.h>
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
