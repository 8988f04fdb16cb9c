/* The warm lane's socket calls (fastfaas._lane): one frame in, one out. */
#ifndef FF_LANE_H
#define FF_LANE_H

#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>

#define FF_LANE_MAX_FDS 16

/* One datagram from a non-blocking channel into buf: its length (0 at EOF),
 * or -errno. Descriptors that came with it (SCM_RIGHTS, received close-on-exec)
 * are stored in fds (*nfds of them); *flags gets the message flags (MSG_TRUNC,
 * MSG_CTRUNC). */
static inline ssize_t ff_lane_recv(int fd, char *buf, size_t cap, int *fds, int *nfds,
                                   int *flags)
{
    union {
        char space[CMSG_SPACE(FF_LANE_MAX_FDS * sizeof(int))];
        struct cmsghdr align;
    } control;
    struct iovec iov = {.iov_base = buf, .iov_len = cap};
    struct msghdr msg;
    struct cmsghdr *c;
    ssize_t n;

    memset(&msg, 0, sizeof msg);
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.space;
    msg.msg_controllen = sizeof control.space;
    *nfds = 0;
    *flags = 0;
    n = recvmsg(fd, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    if (n < 0)
        return -errno;
    *flags = msg.msg_flags;
    for (c = CMSG_FIRSTHDR(&msg); c != NULL; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
            size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            size_t room = FF_LANE_MAX_FDS - (size_t)*nfds;
            if (k > room)
                k = room;
            memcpy(fds + *nfds, CMSG_DATA(c), k * sizeof(int));
            *nfds += (int)k;
        }
    }
    return n;
}

/* Send a whole datagram or stream chunk without waiting: bytes sent or -errno. */
static inline ssize_t ff_lane_send(int fd, const char *buf, size_t len)
{
    ssize_t n = send(fd, buf, len, MSG_DONTWAIT | MSG_NOSIGNAL);
    return n < 0 ? -errno : n;
}

#endif
