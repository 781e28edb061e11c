/*
 * sock.c - socket setup shared by the UDP and TCP transports
 * (sock_int.h).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "quiver/errors.h"
#include "sock_int.h"

int qv__sock_bind(const char *who, int type, const char *addr, uint16_t port, int rcvbuf,
                  int sndbuf, int backlog)
{
    const char *a = addr ? addr : "0.0.0.0";
    struct sockaddr_storage ss;
    socklen_t len;
    int one = 1;
    memset(&ss, 0, sizeof ss);
    struct sockaddr_in *v4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, a, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons(port);
        len = sizeof *v4;
    } else if (inet_pton(AF_INET6, a, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons(port);
        len = sizeof *v6;
    } else {
        return qv_seterr(QV_EINVAL, "%s: bind address '%s' is not an IPv4 or IPv6 literal",
                         who, a);
    }
    int fd = socket(ss.ss_family, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return qv_seterr(-errno, "%s: socket: %s", who, strerror(errno));
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) ||
        (type == SOCK_STREAM && setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one)) ||
        (rcvbuf > 0 && setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf)) ||
        (sndbuf > 0 && setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf))) {
        int e = errno;
        close(fd);
        return qv_seterr(-e, "%s: setsockopt: %s", who, strerror(e));
    }
    if (bind(fd, (struct sockaddr *)&ss, len) != 0 ||
        (type == SOCK_STREAM && listen(fd, backlog) != 0)) {
        int e = errno;
        close(fd);
        return qv_seterr(-e, "%s: bind %s port %u: %s", who, a, port, strerror(e));
    }
    return fd;
}

uint16_t qv__sock_port(int fd)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    if (getsockname(fd, (struct sockaddr *)&ss, &len) != 0)
        return 0;
    if (ss.ss_family == AF_INET)
        return ntohs(((struct sockaddr_in *)&ss)->sin_port);
    return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
}
