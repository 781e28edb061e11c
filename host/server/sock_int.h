/*
 * sock_int.h - what the UDP and TCP transports share about sockets: a
 * non-blocking, close-on-exec socket bound to an address literal and a
 * port with SO_REUSEPORT (one per worker on the same port), and the port
 * it got.
 */
#ifndef QUIVER_SOCK_INT_H
#define QUIVER_SOCK_INT_H

#include <stdint.h>

/*
 * qv__sock_bind - socket(type) bound to addr (an IPv4 or IPv6 literal;
 * NULL = 0.0.0.0) port `port` with SO_REUSEPORT (and SO_REUSEADDR for
 * SOCK_STREAM), rcvbuf / sndbuf applied when > 0, listening with
 * `backlog` for SOCK_STREAM.  who ("udp", "tcp") prefixes messages.
 * Returns the fd, or QV_EINVAL (not an address literal) or -errno (with
 * the address and port in the message).
 */
int qv__sock_bind(const char *who, int type, const char *addr, uint16_t port, int rcvbuf,
                  int sndbuf, int backlog);

/* The port fd is bound to (0 when it cannot be read). */
uint16_t qv__sock_port(int fd);

#endif
