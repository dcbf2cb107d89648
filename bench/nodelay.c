/*
 * Diagnostic for bench/run.sh, not part of weightgate: an LD_PRELOAD shim that
 * sets TCP_NODELAY on every socket the process accepts, to measure how much of
 * the fetch latency is Nagle's algorithm holding back the end of a response
 * until the client's delayed ACK arrives.
 *
 *   cc -shared -fPIC -O2 -o nodelay.so nodelay.c -ldl
 *   LD_PRELOAD=$PWD/nodelay.so weightgate serve
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

static void nodelay(int fd) {
    if (fd >= 0) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
}

int accept4(int fd, struct sockaddr *addr, socklen_t *len, int flags) {
    static int (*real)(int, struct sockaddr *, socklen_t *, int);
    if (!real) real = dlsym(RTLD_NEXT, "accept4");
    int c = real(fd, addr, len, flags);
    nodelay(c);
    return c;
}

int accept(int fd, struct sockaddr *addr, socklen_t *len) {
    static int (*real)(int, struct sockaddr *, socklen_t *);
    if (!real) real = dlsym(RTLD_NEXT, "accept");
    int c = real(fd, addr, len);
    nodelay(c);
    return c;
}
