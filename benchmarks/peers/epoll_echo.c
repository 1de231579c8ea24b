/*
 * epoll_echo: the practical limit for the echo benchmark. One thread, one epoll
 * loop, non-blocking sockets; TCP, Unix stream and UDP.
 *
 *   gcc -O2 -Wall -Wextra -std=gnu11 -o epoll_echo epoll_echo.c
 *   ./epoll_echo --proto tcp|udp|unix [--host 127.0.0.1] [--port 0] [--path P] [--variant epoll]
 *
 * Prints "READY tcp 127.0.0.1 <port>" (or "READY udp ...", "READY unix <path>")
 * once listening, and exits 0 on SIGTERM.
 *
 * Level-triggered epoll: each readiness event does one read and one write, so a
 * busy connection cannot starve the others, and the kernel reports again whatever
 * is left. Every connection shares one read buffer; a connection gets a buffer of
 * its own only while the kernel would not take a whole echo (a partial write), and
 * stops reading until that is flushed, so memory stays bounded per connection.
 */
#define _GNU_SOURCE /* accept4 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define BACKLOG 4096    /* the kernel caps it at net.core.somaxconn */
#define BUFSIZE 65536   /* one read; also the largest UDP payload */
#define MAX_EVENTS 256

enum kind { LISTENER, SIGNALS, STREAM, DATAGRAM };

/* What an epoll event points at. */
struct conn {
    enum kind kind;
    int fd;
    char *pending; /* unsent tail of the last echo, or NULL */
    size_t pending_len;
    size_t pending_off;
};

static int epfd;
static char buf[BUFSIZE];

static void die(const char *what)
{
    perror(what);
    exit(1);
}

static struct conn *watch(enum kind kind, int fd)
{
    struct conn *c = calloc(1, sizeof *c);
    if (!c)
        die("calloc");
    c->kind = kind;
    c->fd = fd;
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0)
        die("epoll_ctl");
    return c;
}

static void set_events(struct conn *c, unsigned events)
{
    struct epoll_event ev = {.events = events, .data.ptr = c};
    if (epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev) < 0)
        die("epoll_ctl");
}

static void close_conn(struct conn *c)
{
    close(c->fd); /* also removes it from the epoll set */
    free(c->pending);
    free(c);
}

static void accept_all(int lfd, int is_tcp)
{
    for (;;) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                perror("accept4"); /* EMFILE and the like: retried on the next event */
            return;
        }
        if (is_tcp) {
            int one = 1;
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        }
        watch(STREAM, fd);
    }
}

/* Send what is left of a partial echo; returns -1 if the connection is gone. */
static int flush_pending(struct conn *c)
{
    while (c->pending_off < c->pending_len) {
        ssize_t n = send(c->fd, c->pending + c->pending_off, c->pending_len - c->pending_off,
                         MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return 0;
            return -1;
        }
        c->pending_off += (size_t)n;
    }
    free(c->pending);
    c->pending = NULL;
    set_events(c, EPOLLIN);
    return 0;
}

/* Read once and echo it; returns -1 when the connection is done. */
static int echo_stream(struct conn *c)
{
    ssize_t n = recv(c->fd, buf, sizeof buf, 0);
    if (n == 0)
        return -1;
    if (n < 0)
        return (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) ? 0 : -1;

    ssize_t sent = send(c->fd, buf, (size_t)n, MSG_NOSIGNAL);
    if (sent < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
            return -1;
        sent = 0;
    }
    if (sent < n) {
        /* Keep the rest and stop reading until the kernel has taken it. */
        c->pending_len = (size_t)(n - sent);
        c->pending_off = 0;
        c->pending = malloc(c->pending_len);
        if (!c->pending)
            die("malloc");
        memcpy(c->pending, buf + sent, c->pending_len);
        set_events(c, EPOLLOUT);
    }
    return 0;
}

static void echo_datagrams(int fd)
{
    for (;;) {
        struct sockaddr_storage from;
        socklen_t fromlen = sizeof from;
        ssize_t n = recvfrom(fd, buf, sizeof buf, 0, (struct sockaddr *)&from, &fromlen);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return; /* EAGAIN: drained */
        }
        /* A full socket buffer drops the reply, as UDP may. */
        sendto(fd, buf, (size_t)n, 0, (struct sockaddr *)&from, fromlen);
    }
}

static void usage(void)
{
    fprintf(stderr, "usage: epoll_echo --proto tcp|udp|unix [--host H] [--port N] [--path P]"
                    " [--variant epoll]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    const char *proto = "tcp", *host = "127.0.0.1", *path = NULL;
    int port = 0;
    for (int i = 1; i < argc; i++) {
        if (i + 1 >= argc)
            usage();
        const char *opt = argv[i], *val = argv[++i];
        if (!strcmp(opt, "--proto"))
            proto = val;
        else if (!strcmp(opt, "--host"))
            host = val;
        else if (!strcmp(opt, "--port"))
            port = atoi(val);
        else if (!strcmp(opt, "--path"))
            path = val;
        else if (strcmp(opt, "--variant") || strcmp(val, "epoll"))
            usage();
    }
    int is_tcp = !strcmp(proto, "tcp"), is_udp = !strcmp(proto, "udp");
    int is_unix = !strcmp(proto, "unix");
    if (!is_tcp && !is_udp && !is_unix)
        usage();

    /* 10,000 idle connections need as many descriptors: take the hard limit. */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }

    /* SIGTERM arrives through a signalfd in the epoll set, so the loop exits cleanly. */
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGTERM);
    if (sigprocmask(SIG_BLOCK, &mask, NULL) < 0)
        die("sigprocmask");
    int sfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
    if (sfd < 0)
        die("signalfd");

    int fd;
    if (is_unix) {
        struct sockaddr_un sun = {.sun_family = AF_UNIX};
        if (!path) {
            static char tmp[64];
            snprintf(tmp, sizeof tmp, "/tmp/epoll_echo-%d.sock", (int)getpid());
            path = tmp;
        }
        if (strlen(path) >= sizeof sun.sun_path) {
            fprintf(stderr, "epoll_echo: socket path too long\n");
            return 2;
        }
        strcpy(sun.sun_path, path);
        unlink(path); /* a stale socket file from a killed run would make bind fail */
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0)
            die("socket");
        if (bind(fd, (struct sockaddr *)&sun, sizeof sun) < 0)
            die("bind");
    } else {
        struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
        if (inet_pton(AF_INET, host, &sin.sin_addr) != 1) {
            fprintf(stderr, "epoll_echo: --host must be an IPv4 address\n");
            return 2;
        }
        fd = socket(AF_INET, (is_udp ? SOCK_DGRAM : SOCK_STREAM) | SOCK_NONBLOCK | SOCK_CLOEXEC,
                    0);
        if (fd < 0)
            die("socket");
        if (is_tcp) {
            int one = 1;
            setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        }
        if (bind(fd, (struct sockaddr *)&sin, sizeof sin) < 0)
            die("bind");
        socklen_t len = sizeof sin;
        if (getsockname(fd, (struct sockaddr *)&sin, &len) < 0)
            die("getsockname");
        port = ntohs(sin.sin_port);
    }
    if (!is_udp && listen(fd, BACKLOG) < 0)
        die("listen");

    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0)
        die("epoll_create1");
    watch(SIGNALS, sfd);
    watch(is_udp ? DATAGRAM : LISTENER, fd);

    if (is_unix)
        printf("READY unix %s\n", path);
    else
        printf("READY %s %s %d\n", proto, host, port);
    fflush(stdout);

    struct epoll_event events[MAX_EVENTS];
    for (;;) {
        int n = epoll_wait(epfd, events, MAX_EVENTS, -1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("epoll_wait");
        }
        for (int i = 0; i < n; i++) {
            struct conn *c = events[i].data.ptr;
            switch (c->kind) {
            case SIGNALS:
                if (is_unix)
                    unlink(path);
                return 0;
            case LISTENER:
                accept_all(c->fd, is_tcp);
                break;
            case DATAGRAM:
                echo_datagrams(c->fd);
                break;
            case STREAM:
                /* EPOLLERR and EPOLLHUP come through here too: the read or the
                 * write then fails and the connection is closed. */
                if ((c->pending ? flush_pending(c) : echo_stream(c)) < 0)
                    close_conn(c);
                break;
            }
        }
    }
}
