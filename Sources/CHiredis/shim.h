#ifndef COORD_CHIREDIS_SHIM_H
#define COORD_CHIREDIS_SHIM_H

#include <hiredis/hiredis.h>
#include <hiredis/read.h>
#include <fcntl.h>
#include <errno.h>
#include <poll.h>
#include <unistd.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/prctl.h>

/// Switches a connected context's socket to non-blocking mode, so that the
/// connection thread can multiplex reads and writes with poll(2).
static inline int chiredis_set_nonblocking(redisContext *c) {
    int flags = fcntl(c->fd, F_GETFL);
    if (flags == -1) return -1;
    c->flags &= ~REDIS_BLOCK;
    return fcntl(c->fd, F_SETFL, flags | O_NONBLOCK);
}

/// Reports whether SO_KEEPALIVE is set on the context's socket (1, 0, or -1 on error).
static inline int chiredis_keepalive_enabled(int fd) {
    int value = 0;
    socklen_t len = sizeof(value);
    if (getsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &value, &len) != 0) return -1;
    return value ? 1 : 0;
}

static inline int chiredis_errno(void) { return errno; }

/// Names the calling thread (at most 15 bytes are kept), as top -H and /proc show it.
static inline int chiredis_set_thread_name(const char *name) { return prctl(PR_SET_NAME, name, 0, 0, 0); }

#endif
