/*
 * rpcload: a closed-loop load generator of ONC RPC calls (RFC 5531), for comparing RPC servers
 * (issue 13: servekit against the rpcgen C server of examples/rpc/demo.x).
 *
 *   gcc -O2 -Wall -Wextra -std=gnu11 -o rpcload rpcload.c
 *   rpcload --proto tcp|udp --host H --port P --proc null|add --conns N [--duration SEC=2]
 *           [--warmup SEC=0.5] [--timeout SEC=5] [--udp-timeout MS=200]
 *           [--prog NUM=0x20000123] [--vers NUM=1]
 *
 * A call is AUTH_NONE, to PROG VERS, procedure 0 (null: no arguments) or 1 (add: two ints,
 * a the client's index and b a counter, whose sum is checked against the reply). Over TCP it
 * goes as one record-marked fragment; a reply may come in any number of fragments. Over UDP a
 * call is one datagram on a connected socket.
 *
 * Like loadgen's echo mode, on one thread with one epoll loop: N persistent connections (or
 * connected UDP sockets), opened first, each sending a call, awaiting its reply and sending the
 * next. A reply is matched by xid: over UDP one for an earlier xid (a call given up on) is
 * ignored and counted as late; over TCP any other xid is an error ("bad-reply"), as is a reply
 * that is not MSG_ACCEPTED/SUCCESS or an ADD whose sum is wrong. A TCP call not answered within
 * --timeout is an error ("timeout") and its connection is reopened; a UDP call not answered
 * within --udp-timeout is an error ("lost") and a new call (a new xid) is sent. Latency runs
 * from the send to the reply's last byte. Only what completes in the --duration seconds after
 * --warmup is counted; "MEASURING" and "MEASURED" are printed as that window opens and closes.
 *
 * Output: one JSON object on one line on stdout, with loadgen's keys (requests, errors, rps,
 * lat_us with p50, p90, p99 and max), errors by kind on stderr. Exit status: 0 if the run took
 * place, even with errors; 1 if it could not (no connection, a system call failed, no call
 * answered); 2 for bad arguments.
 */
#define _GNU_SOURCE /* strerrorname_np */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_CONNS 100000
#define MAX_SECONDS 1e6
#define MAX_EVENTS 1024
#define MAX_REPLY 4096 /* NULL and ADD replies are 24 and 28 bytes; more is a bad reply */
#define TICK_MS 10     /* how often timeouts are looked for */
#define NS_PER_SEC 1000000000ull

enum proto { TCP, UDP };
enum proc { P_NULL, P_ADD };
static const char *const proto_names[] = { "tcp", "udp", NULL };
static const char *const proc_names[] = { "null", "add", NULL };

static const char usage[] =
    "usage: rpcload --proto tcp|udp --host H --port P --proc null|add --conns N"
    " [--duration SEC=2] [--warmup SEC=0.5] [--timeout SEC=5] [--udp-timeout MS=200]"
    " [--prog NUM=0x20000123] [--vers NUM=1]\n";

static struct {
    enum proto proto;
    enum proc proc;
    const char *host, *port;
    size_t conns;
    uint32_t prog, vers;
    uint64_t duration, warmup, timeout, udp_timeout; /* ns */
} opt;

static _Noreturn void fail(int status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("rpcload: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(status);
}

#define usage_error(...) fail(2, __VA_ARGS__)
#define die(...) fail(1, __VA_ARGS__)

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * NS_PER_SEC + (uint64_t)ts.tv_nsec;
}

/* ---- Command line ---------------------------------------------------------------------- */

static int parse_choice(const char *name, const char *arg, const char *const *choices)
{
    char allowed[64] = "";
    for (int i = 0; choices[i]; i++) {
        if (strcmp(arg, choices[i]) == 0)
            return i;
        strcat(strcat(allowed, i ? "|" : ""), choices[i]);
    }
    usage_error("--%s must be %s, got '%s'", name, allowed, arg);
}

static uint64_t parse_number(const char *name, const char *arg, uint64_t min, uint64_t max)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(arg, &end, 0); /* 0x... for program numbers */
    if (arg[0] < '0' || arg[0] > '9' || *end || errno || v < min || v > max)
        usage_error("--%s must be an integer from %" PRIu64 " to %" PRIu64 ", got '%s'", name,
                    min, max, arg);
    return v;
}

static uint64_t parse_time(const char *name, const char *arg, bool ms, bool zero_ok)
{
    double unit = ms ? 1e3 : 1;
    char *end;
    errno = 0;
    double v = strtod(arg, &end);
    if (end == arg || *end || errno || !isfinite(v) || v < 0 || (v == 0 && !zero_ok) ||
        v / unit > MAX_SECONDS)
        usage_error("--%s must be a number of %s %s %.0f, got '%s'", name,
                    ms ? "milliseconds" : "seconds", zero_ok ? "from 0 to" : "above 0, up to",
                    MAX_SECONDS * unit, arg);
    return (uint64_t)(v / unit * 1e9 + 0.5);
}

static void parse_args(int argc, char **argv)
{
    enum { PROTO = 256, HOST, PORT, PROC, CONNS, DURATION, WARMUP, TIMEOUT, UDP_TIMEOUT, PROG,
           VERS, HELP };
    static const struct option longopts[] = {
        { "proto", required_argument, NULL, PROTO },
        { "host", required_argument, NULL, HOST },
        { "port", required_argument, NULL, PORT },
        { "proc", required_argument, NULL, PROC },
        { "conns", required_argument, NULL, CONNS },
        { "duration", required_argument, NULL, DURATION },
        { "warmup", required_argument, NULL, WARMUP },
        { "timeout", required_argument, NULL, TIMEOUT },
        { "udp-timeout", required_argument, NULL, UDP_TIMEOUT },
        { "prog", required_argument, NULL, PROG },
        { "vers", required_argument, NULL, VERS },
        { "help", no_argument, NULL, HELP },
        { NULL, 0, NULL, 0 },
    };
    int proto = -1, proc = -1;

    opt.duration = 2 * NS_PER_SEC;
    opt.warmup = NS_PER_SEC / 2;
    opt.timeout = 5 * NS_PER_SEC;
    opt.udp_timeout = NS_PER_SEC / 5;
    opt.prog = 0x20000123;
    opt.vers = 1;

    opterr = 0;
    for (int o; (o = getopt_long(argc, argv, ":", longopts, NULL)) != -1;) {
        switch (o) {
        case PROTO: proto = parse_choice("proto", optarg, proto_names); break;
        case HOST: opt.host = optarg; break;
        case PORT: parse_number("port", optarg, 1, 65535); opt.port = optarg; break;
        case PROC: proc = parse_choice("proc", optarg, proc_names); break;
        case CONNS: opt.conns = parse_number("conns", optarg, 1, MAX_CONNS); break;
        case DURATION: opt.duration = parse_time("duration", optarg, false, false); break;
        case WARMUP: opt.warmup = parse_time("warmup", optarg, false, true); break;
        case TIMEOUT: opt.timeout = parse_time("timeout", optarg, false, false); break;
        case UDP_TIMEOUT: opt.udp_timeout = parse_time("udp-timeout", optarg, true, false); break;
        case PROG: opt.prog = (uint32_t)parse_number("prog", optarg, 0, UINT32_MAX); break;
        case VERS: opt.vers = (uint32_t)parse_number("vers", optarg, 0, UINT32_MAX); break;
        case HELP: fputs(usage, stdout); exit(0);
        case ':': usage_error("%s needs a value", argv[optind - 1]);
        default: usage_error("unknown option '%s' (see --help)", argv[optind - 1]);
        }
    }
    if (optind < argc)
        usage_error("unexpected argument '%s' (see --help)", argv[optind]);
    if (proto < 0 || proc < 0 || !opt.conns || !opt.host || !opt.port)
        usage_error("--proto, --host, --port, --proc and --conns are required (see --help)");
    opt.proto = (enum proto)proto;
    opt.proc = (enum proc)proc;
}

static struct sockaddr_storage addr;
static socklen_t addr_len;

static void resolve(void)
{
    struct addrinfo hints = {
        .ai_socktype = opt.proto == UDP ? SOCK_DGRAM : SOCK_STREAM,
        .ai_flags = AI_NUMERICSERV,
    };
    struct addrinfo *res;
    int rc = getaddrinfo(opt.host, opt.port, &hints, &res);
    if (rc)
        usage_error("cannot resolve --host %s: %s", opt.host, gai_strerror(rc));
    memcpy(&addr, res->ai_addr, res->ai_addrlen);
    addr_len = res->ai_addrlen;
    freeaddrinfo(res);
}

/* ---- Latency histogram (loadgen's: log-linear, 128 steps per power of two) ---------------- */

#define SUB_BITS 7
#define SUB_COUNT (1u << SUB_BITS)
#define BUCKETS ((64 - SUB_BITS + 1) * SUB_COUNT)

static uint64_t hist[BUCKETS], hist_count, hist_max;

static unsigned bucket_of(uint64_t v)
{
    if (v < SUB_COUNT)
        return (unsigned)v;
    unsigned shift = 63 - (unsigned)__builtin_clzll(v) - SUB_BITS;
    return ((shift + 1) << SUB_BITS) + (unsigned)(v >> shift) - SUB_COUNT;
}

static double bucket_mid(unsigned b)
{
    if (b < SUB_COUNT)
        return b;
    unsigned shift = (b >> SUB_BITS) - 1;
    uint64_t low = (uint64_t)((b & (SUB_COUNT - 1)) + SUB_COUNT) << shift;
    return (double)low + (double)((1ull << shift) - 1) / 2;
}

static void hist_record(uint64_t ns)
{
    hist[bucket_of(ns)]++;
    hist_count++;
    if (ns > hist_max)
        hist_max = ns;
}

static double hist_percentile(unsigned p)
{
    uint64_t rank = (p * hist_count + 99) / 100, seen = 0;
    unsigned b = 0;
    while ((seen += hist[b]) < rank)
        b++;
    double mid = bucket_mid(b);
    return mid < (double)hist_max ? mid : (double)hist_max;
}

/* ---- Errors ------------------------------------------------------------------------------ */

enum { K_TIMEOUT, K_LOST, K_CLOSED, K_BAD_REPLY, K_ERRNO };
#define MAX_ERRNO 255
#define KINDS (K_ERRNO + MAX_ERRNO + 1)

static uint64_t counted[KINDS], uncounted[KINDS], requests, late, answered;
static uint64_t win_start = UINT64_MAX, win_end;

static bool in_window(uint64_t t)
{
    return t >= win_start && t < win_end;
}

static void count_error(int kind)
{
    if (in_window(now_ns()))
        counted[kind]++;
    else
        uncounted[kind]++;
}

static const char *kind_name(int kind)
{
    static const char *const ours[] = { "timeout", "lost", "closed", "bad-reply" };
    const char *name = kind < K_ERRNO ? ours[kind] : strerrorname_np(kind - K_ERRNO);
    return name ? name : "unknown-errno";
}

static uint64_t total(const uint64_t *tally)
{
    uint64_t sum = 0;
    for (int k = 0; k < KINDS; k++)
        sum += tally[k];
    return sum;
}

static void report_errors(const uint64_t *tally, const char *where)
{
    uint64_t n = total(tally);
    if (!n)
        return;
    fprintf(stderr, "rpcload: %" PRIu64 " error%s%s:", n, n == 1 ? "" : "s", where);
    const char *sep = " ";
    for (int k = 0; k < KINDS; k++) {
        if (tally[k]) {
            fprintf(stderr, "%s%" PRIu64 " %s", sep, tally[k], kind_name(k));
            sep = ", ";
        }
    }
    fputc('\n', stderr);
}

/* ---- Calls ------------------------------------------------------------------------------- */

struct conn {
    int fd;
    uint32_t index, xid, count;
    int32_t a, b;
    uint64_t sent;             /* when the call in flight went, 0 if none */
    size_t have;               /* reply bytes held (TCP: the record so far) */
    size_t frag_left;          /* TCP: bytes of the current fragment still to come */
    bool frag_last, in_frag;   /* TCP: the current fragment ends the record; a mark was read */
    unsigned char mark[4];     /* TCP: a record mark, perhaps split across reads */
    size_t mark_have;
    unsigned char buf[MAX_REPLY];
};

static struct conn *conns;
static int ep;
static uint32_t next_xid = 0x5eed0001;

static void put32(unsigned char *p, uint32_t v)
{
    v = htonl(v);
    memcpy(p, &v, 4);
}

static uint32_t get32(const unsigned char *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return ntohl(v);
}

static void conn_open(struct conn *c)
{
    int fd = socket(addr.ss_family, (opt.proto == UDP ? SOCK_DGRAM : SOCK_STREAM) | SOCK_CLOEXEC,
                    0);
    if (fd < 0)
        die("socket: %s", strerror(errno));
    if (opt.proto == TCP) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    /* A blocking connect: all are opened before the loop starts. */
    if (connect(fd, (struct sockaddr *)&addr, addr_len) < 0)
        die("connect to %s:%s: %s", opt.host, opt.port, strerror(errno));
    if (fcntl(fd, F_SETFL, O_NONBLOCK) < 0)
        die("fcntl: %s", strerror(errno));
    struct epoll_event ev = { .events = EPOLLIN, .data.ptr = c };
    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0)
        die("epoll_ctl: %s", strerror(errno));
    c->fd = fd;
    c->sent = 0;
    c->have = c->frag_left = c->mark_have = 0;
    c->in_frag = c->frag_last = false;
}

static void conn_close(struct conn *c)
{
    if (c->fd >= 0)
        close(c->fd); /* closing removes it from the epoll set */
    c->fd = -1;
}

/* Send the next call: 40 bytes of header, the arguments, and over TCP a record mark first. */
static void send_call(struct conn *c, uint64_t now)
{
    unsigned char msg[4 + 40 + 8], *p = msg + 4;
    size_t body = opt.proc == P_ADD ? 48 : 40;
    c->xid = next_xid++;
    put32(p, c->xid);
    put32(p + 4, 0);             /* CALL */
    put32(p + 8, 2);             /* RPC version 2 */
    put32(p + 12, opt.prog);
    put32(p + 16, opt.vers);
    put32(p + 20, opt.proc == P_ADD ? 1 : 0);
    memset(p + 24, 0, 16);       /* AUTH_NONE credential and verifier, empty bodies */
    if (opt.proc == P_ADD) {
        c->a = (int32_t)c->index;
        c->b = (int32_t)(c->count++ & 0xffff);
        put32(p + 40, (uint32_t)c->a);
        put32(p + 44, (uint32_t)c->b);
    }
    put32(msg, 0x80000000u | (uint32_t)body); /* one fragment, the last */
    const unsigned char *out = opt.proto == TCP ? msg : p;
    size_t len = opt.proto == TCP ? body + 4 : body;
    c->have = c->frag_left = c->mark_have = 0;
    c->in_frag = c->frag_last = false;
    c->sent = now;
    ssize_t n = send(c->fd, out, len, MSG_NOSIGNAL);
    if (n != (ssize_t)len) {
        /* A short send of 52 bytes on an idle connection does not happen; a failure is an
         * error, and the call stays "in flight" until it times out (UDP: is lost). */
        count_error(n < 0 ? K_ERRNO + (errno < MAX_ERRNO ? errno : MAX_ERRNO) : K_CLOSED);
    }
}

/* The whole reply is in c->buf[0..have): check it. True if it answers the call in flight;
 * false for a late UDP reply (ignored). A reply that is wrong is counted and still ends the
 * call, so the connection goes on. */
static bool check_reply(struct conn *c, uint64_t now)
{
    const unsigned char *p = c->buf;
    if (c->have < 24 || get32(p) != c->xid) {
        if (opt.proto == UDP && c->have >= 4 && get32(p) != c->xid) {
            late++;
            return false;
        }
        count_error(K_BAD_REPLY);
        return true;
    }
    uint32_t verf_len = get32(p + 16), at = 20 + ((verf_len + 3) & ~3u);
    bool ok = get32(p + 4) == 1 && get32(p + 8) == 0 && verf_len <= 400 && c->have >= at + 4 &&
              get32(p + at) == 0;
    if (ok)
        ok = opt.proc == P_ADD
                 ? c->have == at + 8 &&
                       get32(p + at + 4) == (uint32_t)c->a + (uint32_t)c->b + (opt.vers == 2 ? 1000u : 0u)
                 : c->have == at + 4;
    if (!ok) {
        count_error(K_BAD_REPLY);
        return true;
    }
    if (in_window(now)) {
        requests++;
        hist_record(now - c->sent);
    }
    answered++;
    return true;
}

static bool looping = true; /* false: the window is over, let the calls in flight finish */

static void call_done(struct conn *c, uint64_t now)
{
    c->sent = 0;
    if (looping)
        send_call(c, now);
}

static void on_udp(struct conn *c)
{
    for (;;) {
        ssize_t n = recv(c->fd, c->buf, sizeof c->buf, 0);
        if (n < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
                count_error(K_ERRNO + (errno < MAX_ERRNO ? errno : MAX_ERRNO));
            return;
        }
        if (!c->sent) {
            late++;
            continue;
        }
        c->have = (size_t)n;
        uint64_t now = now_ns();
        if (check_reply(c, now))
            call_done(c, now);
    }
}

static void reopen(struct conn *c, int kind)
{
    count_error(kind);
    conn_close(c);
    conn_open(c);
    if (looping)
        send_call(c, now_ns());
}

/* TCP: read record marks and fragments into c->buf until the record's last fragment. */
static void on_tcp(struct conn *c)
{
    unsigned char in[8192];
    for (;;) {
        ssize_t n = recv(c->fd, in, sizeof in, 0);
        if (n == 0) {
            reopen(c, K_CLOSED);
            return;
        }
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
                return;
            reopen(c, K_ERRNO + (errno < MAX_ERRNO ? errno : MAX_ERRNO));
            return;
        }
        if (!c->sent) { /* nothing was asked */
            reopen(c, K_BAD_REPLY);
            return;
        }
        for (size_t i = 0; i < (size_t)n;) {
            if (!c->in_frag) { /* a record mark, perhaps split across reads */
                c->mark[c->mark_have++] = in[i++];
                if (c->mark_have < 4)
                    continue;
                c->mark_have = 0;
                uint32_t m = get32(c->mark);
                c->frag_last = m >> 31;
                c->frag_left = m & 0x7fffffffu;
                c->in_frag = true;
                if (c->have + c->frag_left > sizeof c->buf) {
                    reopen(c, K_BAD_REPLY);
                    return;
                }
            }
            size_t take = (size_t)n - i < c->frag_left ? (size_t)n - i : c->frag_left;
            memcpy(c->buf + c->have, in + i, take);
            c->have += take;
            c->frag_left -= take;
            i += take;
            if (c->frag_left == 0) {
                c->in_frag = false;
                if (c->frag_last) {
                    if (i != (size_t)n) { /* a second reply to one call */
                        reopen(c, K_BAD_REPLY);
                        return;
                    }
                    uint64_t now = now_ns();
                    check_reply(c, now);
                    call_done(c, now);
                }
            }
        }
    }
}

/* Timeouts: a TCP call unanswered for --timeout reopens its connection; a UDP call
 * unanswered for --udp-timeout is lost and sent anew. */
static void check_timeouts(uint64_t now)
{
    uint64_t limit = opt.proto == UDP ? opt.udp_timeout : opt.timeout;
    for (size_t i = 0; i < opt.conns; i++) {
        struct conn *c = &conns[i];
        if (!c->sent || now - c->sent < limit)
            continue;
        if (opt.proto == UDP) {
            count_error(K_LOST);
            c->sent = 0;
            if (looping)
                send_call(c, now);
        } else {
            c->sent = 0;
            reopen(c, K_TIMEOUT);
        }
    }
}

static bool in_flight(void)
{
    for (size_t i = 0; i < opt.conns; i++)
        if (conns[i].sent)
            return true;
    return false;
}

/* Run the loop until `until`, or (stop_when_idle) until no call is in flight. */
static uint64_t run_until(uint64_t until, bool stop_when_idle)
{
    struct epoll_event events[MAX_EVENTS];
    uint64_t now = now_ns(), next_tick = now + TICK_MS * 1000000ull;
    while (now < until && !(stop_when_idle && !in_flight())) {
        uint64_t wake = until < next_tick ? until : next_tick;
        int ms = (int)((wake - now + 999999) / 1000000);
        int n = epoll_wait(ep, events, MAX_EVENTS, ms);
        if (n < 0 && errno != EINTR)
            die("epoll_wait: %s", strerror(errno));
        for (int i = 0; i < n; i++) {
            struct conn *c = events[i].data.ptr;
            if (opt.proto == UDP)
                on_udp(c);
            else
                on_tcp(c);
        }
        now = now_ns();
        if (now >= next_tick) {
            check_timeouts(now);
            next_tick = now + TICK_MS * 1000000ull;
        }
    }
    return now;
}

static void mark(const char *what)
{
    printf("%s\n", what);
    fflush(stdout);
}

int main(int argc, char **argv)
{
    parse_args(argc, argv);
    resolve();
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    conns = calloc(opt.conns, sizeof *conns);
    if (!conns)
        die("out of memory");
    ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0)
        die("epoll_create1: %s", strerror(errno));
    for (size_t i = 0; i < opt.conns; i++) {
        conns[i].index = (uint32_t)i;
        conns[i].fd = -1;
        conn_open(&conns[i]);
    }
    uint64_t now = now_ns();
    win_start = now + opt.warmup;
    win_end = win_start + opt.duration;
    for (size_t i = 0; i < opt.conns; i++)
        send_call(&conns[i], now);
    run_until(win_start, false);
    mark("MEASURING");
    run_until(win_end, false);
    mark("MEASURED");
    looping = false;
    run_until(now_ns() + (opt.proto == UDP ? opt.udp_timeout : opt.timeout), true);
    for (size_t i = 0; i < opt.conns; i++)
        conn_close(&conns[i]);
    if (!answered)
        die("no call was answered");

    double secs = (double)opt.duration / 1e9;
    printf("{\"mode\":\"rpc-%s\",\"proto\":\"%s\",\"conns\":%zu,\"duration\":%.3f,"
           "\"requests\":%" PRIu64 ",\"errors\":%" PRIu64 ",\"rps\":%.1f,\"lat_us\":",
           proc_names[opt.proc], proto_names[opt.proto], opt.conns, secs, requests,
           total(counted), (double)requests / secs);
    if (hist_count)
        printf("{\"p50\":%.1f,\"p90\":%.1f,\"p99\":%.1f,\"max\":%.1f}",
               hist_percentile(50) / 1e3, hist_percentile(90) / 1e3, hist_percentile(99) / 1e3,
               (double)hist_max / 1e3);
    else
        printf("{\"p50\":null,\"p90\":null,\"p99\":null,\"max\":null}");
    printf(",\"late\":%" PRIu64 "}\n", late);
    fflush(stdout);
    report_errors(counted, "");
    report_errors(uncounted, " outside the measured window, not counted");
    if (late)
        fprintf(stderr, "rpcload: %" PRIu64 " late UDP replies ignored\n", late);
    return 0;
}
