/*
 * loadgen: a closed-loop load generator for comparing echo servers.
 *
 *   gcc -O2 -Wall -Wextra -std=gnu11 -o loadgen loadgen.c
 *   loadgen --proto tcp|udp|unix (--host H --port P | --path P) --mode echo|churn|idle|burst
 *           --conns N --size S [--duration SEC=2] [--warmup SEC=0.5] [--timeout SEC=5]
 *           [--hold SEC=2] [--deadline SEC=1] [--udp-timeout MS=200]
 *           [--slow N [--slow-interval SEC=1]]
 *
 * A request is S bytes, S-1 of 'x' then '\n' (so line-based servers answer too), and a client
 * sends its next request only once all S bytes have come back. Over UDP the request starts with
 * its sequence number in hex (8 digits, or S-1 if fewer fit): text, so the payload stays one
 * line, and enough that a reply arriving after its request was given up cannot pass for the
 * current one. A --path starting with '@' names a socket in Linux's abstract namespace.
 *
 * Modes, all on one thread with one epoll loop:
 *   echo   N persistent connections (or connected UDP sockets), opened first, each sending,
 *          awaiting the echo and sending again. Latency runs from the send to the echo's last
 *          byte. A stream connection that fails, or whose request is not echoed within
 *          --timeout, is an error and is reopened; a UDP request not answered within
 *          --udp-timeout is an error ("lost") and is sent anew.
 *   churn  N clients, each connecting, sending one request, reading its echo and closing, over
 *          and over. Latency runs from the connect; a failed or --timeout-long cycle is an error.
 *   idle   N connections, at most 256 being opened at once, each answered once; then the line
 *          "HELD <answered>" on stdout, and all held open, silent, for --hold seconds. The
 *          server closing one after its answer is an error ("closed") too.
 *   burst  N connects issued at once, each sending as soon as it is connected. Counts the
 *          echoes complete within --deadline and within --timeout of the burst's start.
 * Slow clients (--slow N, echo over a stream protocol): N more connections, opened before the
 * echo clients (at most 256 being opened at once, until all are connected or --timeout), each
 * sending one byte ('x') as it connects and another every --slow-interval seconds: a line that
 * never ends. Whatever the server sends them is read and dropped. When the server closes or
 * resets one (its read or idle timeout), it is reconnected at once; a connect that fails is
 * retried after --slow-interval. Then the echo clients run as above, the slow ones trickling on
 * throughout. A slow client counts as connected from its handshake until the server cuts it
 * (one waiting in the server's listen backlog counts: the client cannot tell). Their figures
 * are apart from the echo clients': how many were connected as the window opened, the least,
 * the mean over time and the most during it, and as it closed; how many the server cut, how
 * many connects failed, and the bytes sent, in the window.
 * echo and churn count only what completes in the --duration seconds after --warmup, then let
 * the requests in flight finish, uncounted, so that every connection ends in a clean close.
 * idle and burst count everything, time each request from its connect, and report as their
 * duration the opening of the N connections (idle) or the burst, ending at the last echo or at
 * --timeout; a connection not answered by then is an error ("timeout"). A Unix connect refused
 * for a full listen backlog (EAGAIN) is not an error: it is retried every millisecond, as a TCP
 * client's kernel resends a SYN dropped by a full backlog.
 *
 * Output: one JSON object on one line on stdout (after the HELD line; in echo and churn after
 * MEASURING and MEASURED, printed as the measured window opens and closes; with --slow, after
 * "SLOW <connected>" once the slow clients are open), errors by kind on stderr.
 * Exit status: 0 if the run took place, even with errors; 1 if it could not (no connection could
 * be made, or a system call failed); 2 for bad arguments.
 */
#define _GNU_SOURCE /* strerrorname_np */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define MAX_SIZE 65507      /* the largest UDP payload over IPv4 */
#define OPEN_WINDOW 256     /* connects under way at once while opening for idle and echo */
#define SEQ_DIGITS 8
#define MAX_CONNS 1000000   /* beyond any open-file limit in practice */
#define MAX_SECONDS 1e6     /* keeps every time, in ns, far from overflowing 64 bits */
#define SPARE_FDS 8         /* stdio, the epoll fd and a margin, beyond one per connection */
#define MAX_EVENTS 1024
#define BACKLOG_RETRY_MS 1  /* how soon to retry a Unix connect refused for a full backlog */
#define NS_PER_SEC 1000000000ull

enum proto { TCP, UDP, UNIX };
enum mode { ECHO, CHURN, IDLE, BURST };
static const char *const proto_names[] = { "tcp", "udp", "unix", NULL };
static const char *const mode_names[] = { "echo", "churn", "idle", "burst", NULL };

static const char usage[] =
    "usage: loadgen --proto tcp|udp|unix (--host H --port P | --path P)"
    " --mode echo|churn|idle|burst --conns N --size S [--duration SEC=2] [--warmup SEC=0.5]"
    " [--timeout SEC=5] [--hold SEC=2] [--deadline SEC=1] [--udp-timeout MS=200]"
    " [--slow N [--slow-interval SEC=1]]\n";

static struct {
    enum proto proto;
    enum mode mode;
    const char *host, *port, *path;
    size_t conns, size, slow;
    uint64_t duration, warmup, timeout, hold, deadline, udp_timeout, slow_interval; /* ns */
} opt;

static _Noreturn void fail(int status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("loadgen: ", stderr);
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

static size_t parse_count(const char *name, const char *arg, size_t min, size_t max)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(arg, &end, 10);
    /* strtoull would take "-1" as a huge number: insist on a digit first. */
    if (arg[0] < '0' || arg[0] > '9' || *end || errno || v < min || v > max)
        usage_error("--%s must be an integer from %zu to %zu, got '%s'", name, min, max, arg);
    return (size_t)v;
}

/* A time in seconds, or milliseconds if `ms`, returned in ns. */
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
    enum { PROTO = 256, HOST, PORT, PATH, MODE, CONNS, SIZE, DURATION, WARMUP, TIMEOUT, HOLD,
           DEADLINE, UDP_TIMEOUT, SLOW, SLOW_INTERVAL, HELP };
    static const struct option longopts[] = {
        { "proto", required_argument, NULL, PROTO },
        { "host", required_argument, NULL, HOST },
        { "port", required_argument, NULL, PORT },
        { "path", required_argument, NULL, PATH },
        { "mode", required_argument, NULL, MODE },
        { "conns", required_argument, NULL, CONNS },
        { "size", required_argument, NULL, SIZE },
        { "duration", required_argument, NULL, DURATION },
        { "warmup", required_argument, NULL, WARMUP },
        { "timeout", required_argument, NULL, TIMEOUT },
        { "hold", required_argument, NULL, HOLD },
        { "deadline", required_argument, NULL, DEADLINE },
        { "udp-timeout", required_argument, NULL, UDP_TIMEOUT },
        { "slow", required_argument, NULL, SLOW },
        { "slow-interval", required_argument, NULL, SLOW_INTERVAL },
        { "help", no_argument, NULL, HELP },
        { NULL, 0, NULL, 0 },
    };
    int proto = -1, mode = -1;

    opt.duration = 2 * NS_PER_SEC;
    opt.warmup = NS_PER_SEC / 2;
    opt.timeout = 5 * NS_PER_SEC;
    opt.hold = 2 * NS_PER_SEC;
    opt.deadline = NS_PER_SEC;
    opt.udp_timeout = NS_PER_SEC / 5;
    opt.slow_interval = NS_PER_SEC;

    opterr = 0; /* our own one-line messages instead of getopt's */
    for (int o; (o = getopt_long(argc, argv, ":", longopts, NULL)) != -1;) {
        switch (o) {
        case PROTO: proto = parse_choice("proto", optarg, proto_names); break;
        case HOST: opt.host = optarg; break;
        case PORT: parse_count("port", optarg, 1, 65535); opt.port = optarg; break; /* as text */
        case PATH: opt.path = optarg; break;
        case MODE: mode = parse_choice("mode", optarg, mode_names); break;
        case CONNS: opt.conns = parse_count("conns", optarg, 1, MAX_CONNS); break;
        case SIZE: opt.size = parse_count("size", optarg, 1, MAX_SIZE); break;
        case DURATION: opt.duration = parse_time("duration", optarg, false, false); break;
        case WARMUP: opt.warmup = parse_time("warmup", optarg, false, true); break;
        case TIMEOUT: opt.timeout = parse_time("timeout", optarg, false, false); break;
        case HOLD: opt.hold = parse_time("hold", optarg, false, true); break;
        case DEADLINE: opt.deadline = parse_time("deadline", optarg, false, false); break;
        case UDP_TIMEOUT: opt.udp_timeout = parse_time("udp-timeout", optarg, true, false); break;
        case SLOW: opt.slow = parse_count("slow", optarg, 0, MAX_CONNS); break;
        case SLOW_INTERVAL:
            opt.slow_interval = parse_time("slow-interval", optarg, false, false);
            break;
        case HELP: fputs(usage, stdout); exit(0);
        case ':': usage_error("%s needs a value", argv[optind - 1]);
        default: usage_error("unknown option '%s' (see --help)", argv[optind - 1]);
        }
    }
    if (optind < argc)
        usage_error("unexpected argument '%s' (see --help)", argv[optind]);
    if (proto < 0 || mode < 0 || !opt.conns || !opt.size)
        usage_error("--proto, --mode, --conns and --size are required (see --help)");
    opt.proto = (enum proto)proto;
    opt.mode = (enum mode)mode;
    if (opt.proto == UNIX && (!opt.path || opt.host || opt.port))
        usage_error("--proto unix takes --path and no --host or --port");
    if (opt.proto != UNIX && (!opt.host || !opt.port || opt.path))
        usage_error("--proto %s takes --host and --port and no --path", proto_names[proto]);
    if (opt.proto == UDP && opt.mode != ECHO)
        usage_error("--mode %s needs a stream protocol (tcp or unix)", mode_names[mode]);
    if (opt.slow && (opt.mode != ECHO || opt.proto == UDP))
        usage_error("--slow needs --mode echo over a stream protocol (tcp or unix)");
}

/* ---- The server's address ---------------------------------------------------------------- */

static struct sockaddr_storage addr;
static socklen_t addr_len;
static int socktype;

static void resolve(void)
{
    if (opt.proto == UNIX) {
        struct sockaddr_un *sun = (struct sockaddr_un *)&addr;
        size_t len = strlen(opt.path);
        bool abstract = opt.path[0] == '@';

        if (len == 0 || len >= sizeof sun->sun_path)
            usage_error("--path must be 1 to %zu bytes long", sizeof sun->sun_path - 1);
        sun->sun_family = AF_UNIX;
        memcpy(sun->sun_path, opt.path, len);
        if (abstract)
            sun->sun_path[0] = '\0';
        /* An abstract name is exactly its bytes; a path also counts its terminating NUL. */
        addr_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len + !abstract);
        socktype = SOCK_STREAM;
        return;
    }

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
    socktype = res->ai_socktype;
    freeaddrinfo(res);
}

/* ---- Latency histogram ------------------------------------------------------------------- */

/*
 * A log-linear histogram of nanoseconds rather than every sample: its size and the cost of a
 * sample stay fixed however long and fast the run (a C server answers hundreds of thousands of
 * requests a second). Each power of two is split into 128 linear buckets, so a bucket spans
 * under 1/128 of its values; reporting its midpoint puts a percentile within 0.4% of the exact
 * one. Values below 128 ns have a bucket each; the maximum is kept exactly.
 */
#define SUB_BITS 7
#define SUB_COUNT (1u << SUB_BITS)
#define BUCKETS ((64 - SUB_BITS + 1) * SUB_COUNT)

static uint64_t hist[BUCKETS], hist_count, hist_max;

static unsigned bucket_of(uint64_t v)
{
    if (v < SUB_COUNT)
        return (unsigned)v;
    unsigned shift = 63 - (unsigned)__builtin_clzll(v) - SUB_BITS;
    /* v >> shift has its top bit at SUB_BITS: it picks one of the SUB_COUNT linear steps. */
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

/* The value below which p percent of the samples fall (nearest rank); hist_count > 0. */
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

/* Kinds of error: a few of our own, then one per errno value (Linux's are all below 134). */
enum { K_TIMEOUT, K_LOST, K_CLOSED, K_BAD_REPLY, K_ERRNO };
#define MAX_ERRNO 255
#define KINDS (K_ERRNO + MAX_ERRNO + 1)

/* Errors inside the counted window, and outside it (echo's setup, and the warmup and drain). */
static uint64_t counted[KINDS], uncounted[KINDS];
static uint64_t win_start = UINT64_MAX, win_end; /* [start, end), in ns; empty until set */
static int last_error = -1;

static int errno_kind(int e)
{
    return K_ERRNO + (e < MAX_ERRNO ? e : MAX_ERRNO);
}

static const char *kind_name(int kind)
{
    static const char *const ours[] = { "timeout", "lost", "closed", "bad-reply" };
    const char *name = kind < K_ERRNO ? ours[kind] : strerrorname_np(kind - K_ERRNO);
    return name ? name : "unknown-errno";
}

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
    last_error = kind;
}

static uint64_t total(const uint64_t *tally)
{
    uint64_t sum = 0;
    for (int k = 0; k < KINDS; k++)
        sum += tally[k];
    return sum;
}

/* One line such as "loadgen: 3 errors: 2 ECONNRESET, 1 timeout", if there were any. */
static void report_errors(const uint64_t *tally, const char *where)
{
    uint64_t n = total(tally);
    if (!n)
        return;
    fprintf(stderr, "loadgen: %" PRIu64 " error%s%s:", n, n == 1 ? "" : "s", where);
    const char *sep = " ";
    for (int k = 0; k < KINDS; k++) {
        if (tally[k]) {
            fprintf(stderr, "%s%" PRIu64 " %s", sep, tally[k], kind_name(k));
            sep = ", ";
        }
    }
    fputc('\n', stderr);
}

/* ---- Connections ------------------------------------------------------------------------- */

/* A circular doubly linked list; an unlinked node, or an empty list's head, points at itself. */
struct link {
    struct link *prev, *next;
};

static void link_init(struct link *l)
{
    l->prev = l->next = l;
}

static bool linked(const struct link *l)
{
    return l->next != l;
}

static void link_remove(struct link *l)
{
    l->prev->next = l->next;
    l->next->prev = l->prev;
    link_init(l);
}

static void link_append(struct link *head, struct link *l)
{
    l->prev = head->prev;
    l->next = head;
    head->prev->next = l;
    head->prev = l;
}

static void link_prepend(struct link *head, struct link *l)
{
    l->prev = head;
    l->next = head->next;
    head->next->prev = l;
    head->next = l;
}

enum state {
    CLOSED,     /* no socket */
    BACKLOG,    /* a Unix connect failed with EAGAIN (the listen backlog was full): to retry */
    CONNECTING, /* a TCP handshake under way */
    REQUEST,    /* a request in flight: being sent, awaiting its echo, or both */
    PARKED,     /* connected, nothing in flight */
};

struct conn {
    struct link timer;  /* in `timers` while a deadline is set */
    struct link queued; /* in `queue` or `backlog` while waiting to connect */
    uint64_t start;     /* when the current request (or connect) began, ns */
    uint64_t deadline;
    size_t sent, got;   /* bytes of the current request sent, and echoed */
    uint32_t seq;       /* number of the current request, sent over UDP */
    uint32_t mask;      /* events registered with epoll; 0 if not registered */
    int fd;
    enum state state;
    bool slow;          /* one of the --slow clients, apart from the busy/queue machinery */
};

#define CONN_OF(l, member) ((struct conn *)((char *)(l) - offsetof(struct conn, member)))

static struct conn *conns;
static int ep;
static char *req;                /* the request; UDP sends stamp their number in it */
static char scratch[MAX_SIZE];   /* where echoes are read to, and dropped */
static size_t seq_digits;

/*
 * Deadlines of the requests (or connects) in flight, soonest first. One mode uses one time
 * limit (--timeout, or --udp-timeout over UDP) and a deadline is always set from a fresh clock
 * reading, so appending keeps the list sorted and only its head need be checked. idle and burst
 * have a single deadline for the whole opening or burst instead (conn_timeout 0).
 */
static struct link timers;
static uint64_t conn_timeout;

/*
 * Slots waiting to connect, and those whose Unix connect found the listen backlog full and must
 * try again (oldest first in both), linked through conn.queued; and how many slots are busy:
 * opening a connection or running a request.
 */
static struct link queue, backlog;
static size_t busy;
static size_t cap = SIZE_MAX;    /* new connects wait while this many are busy */
/* echo's run and churn: keep every slot busy, reopening failed connections and starting the
   next request (echo) or cycle (churn) as soon as one ends. */
static bool looping;
static bool reached;             /* a connection made, or (UDP) a datagram received */

static uint64_t requests, in_deadline, stale, burst_start;

static bool is_busy(enum state s)
{
    return s == BACKLOG || s == CONNECTING || s == REQUEST;
}

static void set_state(struct conn *c, enum state s)
{
    busy = busy + is_busy(s) - is_busy(c->state);
    c->state = s;
}

static void queue_push(struct conn *c)
{
    link_append(&queue, &c->queued);
}

static void timer_arm(struct conn *c)
{
    if (!conn_timeout)
        return;
    c->deadline = c->start + conn_timeout;
    link_remove(&c->timer);
    link_append(&timers, &c->timer);
}

static void park(struct conn *c)
{
    link_remove(&c->timer);
    set_state(c, PARKED);
}

static void conn_close(struct conn *c)
{
    link_remove(&c->timer);
    link_remove(&c->queued);
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    c->mask = 0;
    set_state(c, CLOSED);
}

/*
 * Counts an error and closes the connection. A slot to reopen is queued rather than reopened
 * here, so that a connect refused on the spot (as Unix connects are) cannot recurse.
 */
static void conn_fail(struct conn *c, int kind)
{
    count_error(kind);
    conn_close(c);
    if (looping)
        queue_push(c);
}

/*
 * Edge-triggered, so a socket costs nothing while it waits. EPOLLOUT is wanted only while
 * connecting or after a send blocked: Unix and UDP sockets report it again every time the peer
 * takes a request off their send buffer, which would double the wake-ups. on_event() drops it
 * the first time it fires for nothing; TCP reports it only after a blocked send, so TCP
 * connections keep it and are spared an epoll_ctl() each.
 */
static void watch(struct conn *c, bool out)
{
    uint32_t mask = EPOLLIN | EPOLLRDHUP | EPOLLET | (out ? EPOLLOUT : 0);
    if (mask == c->mask)
        return;
    struct epoll_event ev = { .events = mask, .data.ptr = c };
    if (epoll_ctl(ep, c->mask ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, c->fd, &ev) < 0)
        die("epoll_ctl: %s", strerror(errno));
    c->mask = mask;
}

static void stamp_seq(char *dst, uint32_t seq)
{
    for (size_t i = seq_digits; i-- > 0; seq >>= 4)
        dst[i] = "0123456789abcdef"[seq & 15];
}

/* Sends what is left of the request; false if that failed and closed the connection. */
static bool pump_send(struct conn *c)
{
    while (c->sent < opt.size) {
        if (seq_digits) /* UDP: the whole datagram goes at once, so sent is 0 here */
            stamp_seq(req, c->seq);
        ssize_t n = send(c->fd, req + c->sent, opt.size - c->sent, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno != EAGAIN) {
                conn_fail(c, errno_kind(errno));
                return false;
            }
            watch(c, true);
            return true;
        }
        c->sent += (size_t)n;
    }
    return true;
}

/* Starts a request on a connected socket, timed from c->start. */
static void send_request(struct conn *c)
{
    c->sent = c->got = 0;
    c->seq++;
    set_state(c, REQUEST);
    pump_send(c);
}

/* echo: the next request, timed from its own send; or none, once the run is over. */
static void next_request(struct conn *c, uint64_t t)
{
    if (!looping) {
        park(c);
        return;
    }
    c->start = t;
    timer_arm(c);
    send_request(c);
}

/* idle: a held connection should stay silent; the server closing it is an error. */
static void check_held(struct conn *c)
{
    for (;;) {
        ssize_t n = recv(c->fd, scratch, sizeof scratch, 0);
        if (n > 0)
            continue; /* unasked-for data is the server's business; only a close matters */
        if (n == 0 || errno != EAGAIN)
            conn_fail(c, n == 0 ? K_CLOSED : errno_kind(errno));
        return;
    }
}

static void on_answer(struct conn *c, uint64_t t)
{
    if (in_window(t)) {
        hist_record(t - c->start);
        requests++;
    }
    switch (opt.mode) {
    case ECHO:
        next_request(c, t);
        break;
    case CHURN:
        conn_close(c);
        if (looping)
            queue_push(c);
        break;
    case IDLE:
        park(c);
        /* A close right behind the echo raised no event of its own (edge-triggered). */
        check_held(c);
        break;
    case BURST:
        if (t - burst_start <= opt.deadline)
            in_deadline++;
        /* Done with it, as a short-lived client is: a server that serves one connection
         * at a time can then go on to the next. */
        conn_close(c);
        break;
    }
}

/* Reads the echo as far as it has come; reads stop at the request's size. */
static void recv_stream(struct conn *c)
{
    while (c->got < opt.size) {
        ssize_t n = recv(c->fd, scratch, opt.size - c->got, 0);
        if (n > 0) {
            c->got += (size_t)n;
        } else {
            if (n == 0 || errno != EAGAIN)
                conn_fail(c, n == 0 ? K_CLOSED : errno_kind(errno));
            return;
        }
    }
    on_answer(c, now_ns());
}

/*
 * Reads every datagram queued (edge-triggered: there is no second notice) until the current
 * request's reply. Replies to earlier requests, given up as lost, are counted and skipped.
 */
static void recv_datagrams(struct conn *c)
{
    char want[SEQ_DIGITS];
    stamp_seq(want, c->seq);
    for (;;) {
        /* MSG_TRUNC: the datagram's true length, should it be longer than the buffer. */
        ssize_t n = recv(c->fd, scratch, sizeof scratch, MSG_TRUNC);
        if (n < 0) {
            if (errno != EAGAIN)
                conn_fail(c, errno_kind(errno));
            return;
        }
        reached = true;
        if (c->sent < opt.size || (size_t)n < seq_digits || memcmp(scratch, want, seq_digits)) {
            stale++;
            continue;
        }
        if ((size_t)n != opt.size)
            conn_fail(c, K_BAD_REPLY);
        else
            on_answer(c, now_ns());
        return;
    }
}

static void on_connected(struct conn *c)
{
    if (opt.proto != UDP) /* connecting a UDP socket proves nothing */
        reached = true;
    if (opt.mode == ECHO)
        next_request(c, now_ns());
    else
        send_request(c); /* timed from the connect */
}

/*
 * Starts connecting c, or retries a Unix connect that found the backlog full. Returns false if
 * the backlog is (still) full, for the caller to queue c in `backlog`.
 */
static bool conn_open(struct conn *c)
{
    if (c->fd < 0) {
        c->fd = socket(addr.ss_family, socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (c->fd < 0)
            die("socket: %s", strerror(errno));
        /* Without it, Nagle would hold back the tail of a request longer than a segment
           until the peer acknowledged the head. */
        int one = 1;
        if (opt.proto == TCP &&
            setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) < 0)
            die("TCP_NODELAY: %s", strerror(errno));
        c->start = now_ns();
        timer_arm(c);
    }
    if (connect(c->fd, (struct sockaddr *)&addr, addr_len) == 0) {
        watch(c, false);
        on_connected(c);
    } else if (errno == EINPROGRESS) {
        watch(c, true);
        set_state(c, CONNECTING);
    } else if (errno == EAGAIN) {
        /* Unix: the listener's backlog is full. Try again shortly, as a TCP client's kernel
           resends a SYN that a full backlog dropped. */
        set_state(c, BACKLOG);
        return false;
    } else {
        conn_fail(c, errno_kind(errno));
    }
    return true;
}

/* ---- Slow clients ------------------------------------------------------------------------ */

/*
 * They keep out of `busy`, `queue` and `timers`, which pace the echo clients. A slow client is
 * CLOSED (in `slow_waiting` to connect now, or in `ticks` to retry a failed connect),
 * CONNECTING, or PARKED: connected, in `ticks` for its next byte. `ticks` is kept sorted by
 * due time, which slow_schedule() appends at or after its last entry.
 */
static struct conn *slows;
static struct link slow_waiting, ticks;
static size_t slow_connecting, slow_connected;
static uint64_t slow_errors[KINDS]; /* failed connects, over the whole run */
static struct {
    size_t at_start, at_end, min, max;
    double area;   /* connected clients times ns, inside the window */
    uint64_t last; /* when slow_connected last changed */
    uint64_t cuts, errors, bytes;
} sw = { .min = SIZE_MAX };

static bool all_slow_connected(void)
{
    return slow_connected == opt.slow;
}

/* The window's share of the time slow_connected held its value until t. */
static void slow_account(uint64_t t)
{
    uint64_t from = sw.last > win_start ? sw.last : win_start;
    uint64_t to = t < win_end ? t : win_end;
    if (to > from)
        sw.area += (double)slow_connected * (double)(to - from);
    sw.last = t;
}

static void slow_set_state(struct conn *c, enum state s)
{
    slow_connecting = slow_connecting + (s == CONNECTING) - (c->state == CONNECTING);
    if ((s == PARKED) != (c->state == PARKED)) {
        uint64_t t = now_ns();
        slow_account(t);
        slow_connected = s == PARKED ? slow_connected + 1 : slow_connected - 1;
        if (in_window(t)) {
            if (slow_connected < sw.min)
                sw.min = slow_connected;
            if (slow_connected > sw.max)
                sw.max = slow_connected;
        }
    }
    c->state = s;
}

/*
 * Sets c's next tick --slow-interval after `base`: the tick just due, so that a busy loop's
 * lateness does not add up and lower the rate, or the time of a connect. Not in the past (a
 * loop that fell more than an interval behind does not send a burst to catch up), and not
 * before the last tick queued, which keeps `ticks` sorted (that moves a tick by at most the
 * lateness of the one being rescheduled).
 */
static void slow_schedule(struct conn *c, uint64_t base)
{
    uint64_t due = base + opt.slow_interval, now = now_ns();
    if (due < now)
        due = now;
    if (linked(&ticks) && CONN_OF(ticks.prev, timer)->deadline > due)
        due = CONN_OF(ticks.prev, timer)->deadline;
    c->deadline = due;
    link_remove(&c->timer);
    link_append(&ticks, &c->timer);
}

static void slow_close(struct conn *c)
{
    link_remove(&c->timer);
    link_remove(&c->queued);
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    c->mask = 0;
    slow_set_state(c, CLOSED);
}

/* The server closed or reset a connected slow client: it connects again at once. */
static void slow_cut(struct conn *c)
{
    if (in_window(now_ns()))
        sw.cuts++;
    slow_close(c);
    link_append(&slow_waiting, &c->queued);
}

/* A connect failed: counted, and tried again after --slow-interval, not in a busy loop. */
static void slow_connect_failed(struct conn *c, int kind)
{
    slow_errors[kind]++;
    if (in_window(now_ns()))
        sw.errors++;
    slow_close(c);
    slow_schedule(c, now_ns());
}

/* Sends one byte, the next due an interval after `base`; a failed send means a cut. */
static void slow_send(struct conn *c, uint64_t base)
{
    ssize_t n = send(c->fd, "x", 1, MSG_NOSIGNAL);
    if (n < 0 && errno != EAGAIN) { /* EAGAIN: a full send buffer; try at the next tick */
        slow_cut(c);
        return;
    }
    if (n > 0 && in_window(now_ns()))
        sw.bytes++;
    slow_schedule(c, base);
}

/* Drops what the server sent; the server closing the connection is a cut. */
static void slow_read(struct conn *c)
{
    for (;;) {
        ssize_t n = recv(c->fd, scratch, sizeof scratch, 0);
        if (n > 0)
            continue;
        if (n == 0 || errno != EAGAIN)
            slow_cut(c);
        return;
    }
}

static void slow_on_connected(struct conn *c)
{
    reached = true;
    watch(c, false);
    slow_set_state(c, PARKED);
    slow_send(c, now_ns());
}

static void slow_open(struct conn *c)
{
    c->fd = socket(addr.ss_family, socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0)
        die("socket: %s", strerror(errno));
    int one = 1;
    if (opt.proto == TCP && setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) < 0)
        die("TCP_NODELAY: %s", strerror(errno));
    if (connect(c->fd, (struct sockaddr *)&addr, addr_len) == 0) {
        slow_on_connected(c);
    } else if (errno == EINPROGRESS) {
        watch(c, true);
        slow_set_state(c, CONNECTING);
    } else {
        /* EAGAIN (a full Unix backlog) included: retried at the next tick. */
        slow_connect_failed(c, errno_kind(errno));
    }
}

/* Connects the slow clients waiting to, while fewer than OPEN_WINDOW are connecting. */
static void slow_start_waiting(void)
{
    while (linked(&slow_waiting) && slow_connecting < OPEN_WINDOW) {
        struct conn *c = CONN_OF(slow_waiting.next, queued);
        link_remove(&c->queued);
        slow_open(c);
    }
}

static void slow_event(struct conn *c, uint32_t ev)
{
    if (c->state == CONNECTING) {
        if (ev & (EPOLLERR | EPOLLHUP)) {
            int err = 0;
            socklen_t len = sizeof err;
            getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
            slow_connect_failed(c, err ? errno_kind(err) : K_CLOSED);
            return;
        }
        if (!(ev & EPOLLOUT))
            return;
        slow_on_connected(c);
    }
    if (c->state == PARKED && (ev & (EPOLLIN | EPOLLRDHUP | EPOLLERR | EPOLLHUP)))
        slow_read(c);
}

/* The slow clients' ticks that are due: a byte for the connected, a retry for the others. */
static void slow_expire(uint64_t now)
{
    while (linked(&ticks)) {
        struct conn *c = CONN_OF(ticks.next, timer);
        if (c->deadline > now)
            break;
        link_remove(&c->timer);
        if (c->state == PARKED)
            slow_send(c, c->deadline);
        else if (c->state == CLOSED)
            link_append(&slow_waiting, &c->queued);
    }
}

static void on_event(struct conn *c, uint32_t ev)
{
    if (c->slow) {
        slow_event(c, ev);
        return;
    }
    switch (c->state) {
    case CONNECTING:
        if (ev & (EPOLLERR | EPOLLHUP)) {
            int err = 0;
            socklen_t len = sizeof err;
            getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
            conn_fail(c, err ? errno_kind(err) : K_CLOSED);
        } else if (ev & EPOLLOUT) {
            on_connected(c);
        }
        break;
    case REQUEST:
        if (ev & EPOLLOUT) {
            if (c->sent < opt.size) {
                if (!pump_send(c))
                    break;
            } else if (!(ev & EPOLLIN)) {
                watch(c, false); /* woken for nothing: see watch() */
            }
        }
        if (ev & (EPOLLIN | EPOLLRDHUP | EPOLLERR | EPOLLHUP)) {
            if (opt.proto == UDP)
                recv_datagrams(c);
            else
                recv_stream(c);
        }
        break;
    case PARKED:
        if (opt.mode == IDLE)
            check_held(c);
        break;
    case CLOSED:
    case BACKLOG:
        break;
    }
}

static void expire_timers(uint64_t now)
{
    while (linked(&timers)) {
        struct conn *c = CONN_OF(timers.next, timer);
        if (c->deadline > now)
            break;
        if (opt.proto == UDP) {
            count_error(K_LOST); /* and sent anew, while the run lasts */
            next_request(c, now_ns());
        } else {
            conn_fail(c, K_TIMEOUT);
        }
    }
    slow_expire(now);
}

/*
 * Retries the connects that found a Unix backlog full, stopping at the first still refused (the
 * rest would be too). Then starts the queued slots, oldest first, while fewer than `cap` are
 * busy: all of them, even into a full backlog, as a connect attempt is what starts the clock of
 * a churn cycle or of a burst; but only those queued before this call, as one refused on the
 * spot is queued again, for the next call. Returns how long the loop may wait before calling
 * again: -1 for no limit, 0 if queued slots can start, BACKLOG_RETRY_MS while a backlog is full
 * (nothing signals when it has room).
 */
static int start_queued(void)
{
    while (linked(&backlog)) {
        struct conn *c = CONN_OF(backlog.next, queued);
        link_remove(&c->queued);
        if (!conn_open(c)) {
            link_prepend(&backlog, &c->queued);
            break;
        }
    }
    struct link *last = queue.prev;
    while (linked(&queue) && busy < cap) {
        struct link *l = queue.next;
        link_remove(l);
        if (!conn_open(CONN_OF(l, queued)))
            link_append(&backlog, l);
        if (l == last)
            break;
    }
    if (linked(&backlog))
        return BACKLOG_RETRY_MS;
    return linked(&queue) && busy < cap ? 0 : -1;
}

static bool settled(void)
{
    return busy == 0 && !linked(&queue);
}

/* The event loop: runs until `until`, or until done() if given. Returns the time. */
static uint64_t run_until(uint64_t until, bool (*done)(void))
{
    static struct epoll_event events[MAX_EVENTS];
    for (;;) {
        int wait = start_queued();
        slow_start_waiting();
        uint64_t now = now_ns();
        if (now >= until || (done && done()))
            return now;

        uint64_t wake = until;
        if (linked(&timers) && CONN_OF(timers.next, timer)->deadline < wake)
            wake = CONN_OF(timers.next, timer)->deadline;
        if (linked(&ticks) && CONN_OF(ticks.next, timer)->deadline < wake)
            wake = CONN_OF(ticks.next, timer)->deadline;
        uint64_t ms = wake > now ? (wake - now + 999999) / 1000000 : 0;
        if (wait < 0 || ms < (uint64_t)wait)
            wait = (int)ms; /* at most MAX_SECONDS in ms: fits an int */

        int n = epoll_wait(ep, events, MAX_EVENTS, wait);
        if (n < 0 && errno != EINTR)
            die("epoll_wait: %s", strerror(errno));
        for (int i = 0; i < n; i++)
            on_event(events[i].data.ptr, events[i].events);
        expire_timers(now_ns());
    }
}

static void queue_all(void)
{
    for (size_t i = 0; i < opt.conns; i++)
        queue_push(&conns[i]);
}

/*
 * Opens every connection (at most `cap` at a time) until all are connected (echo) or answered
 * (idle, burst), or --timeout; those left over are timeouts.
 */
static uint64_t open_all(uint64_t start)
{
    queue_all();
    uint64_t now = run_until(start + opt.timeout, settled);
    for (size_t i = 0; i < opt.conns; i++)
        if (is_busy(conns[i].state) || linked(&conns[i].queued))
            conn_fail(&conns[i], K_TIMEOUT);
    return now;
}

/* Exit 1 if the server was never reached: the run measured nothing about it. */
static void check_reached(void)
{
    if (reached)
        return;
    const char *why = last_error >= K_ERRNO ? strerror(last_error - K_ERRNO)
                    : last_error == K_CLOSED ? "closed by the server"
                    : last_error == K_LOST ? "no reply"
                    : "timed out";
    if (opt.proto == UNIX)
        die("could not reach the server at %s: %s", opt.path, why);
    die("could not reach the server at %s port %s: %s", opt.host, opt.port, why);
}

/*
 * echo, churn: once the window has closed, starts nothing more but lets the requests in flight
 * finish (uncounted), for up to --timeout, so that connections end with a clean close: closing
 * one with an echo still unread would make the kernel reset it.
 */
static void drain(uint64_t now)
{
    looping = false;
    while (linked(&queue))
        conn_close(CONN_OF(queue.next, queued));
    while (linked(&backlog))
        conn_close(CONN_OF(backlog.next, queued));
    run_until(now + opt.timeout, settled);
}

/* ---- Modes ------------------------------------------------------------------------------- */

/* A line for the runner, which reads the server's CPU time when the window opens and closes. */
static void mark(const char *what)
{
    printf("%s\n", what);
    fflush(stdout);
}

/* echo, churn: warm up, then the measured window between MEASURING and MEASURED. */
static uint64_t run_window(void)
{
    run_until(win_start, NULL);
    mark("MEASURING");
    sw.at_start = slow_connected;
    if (sw.at_start < sw.min)
        sw.min = sw.at_start;
    if (sw.at_start > sw.max)
        sw.max = sw.at_start;
    uint64_t now = run_until(win_end, NULL);
    mark("MEASURED");
    slow_account(win_end);
    sw.at_end = slow_connected;
    return now;
}

/* Each mode runs, and returns the duration it reports. */
static uint64_t run_echo(void)
{
    if (opt.slow) {
        for (size_t i = 0; i < opt.slow; i++)
            link_append(&slow_waiting, &slows[i].queued);
        run_until(now_ns() + opt.timeout, all_slow_connected);
        printf("SLOW %zu\n", slow_connected);
        fflush(stdout);
    }
    cap = OPEN_WINDOW;
    uint64_t now = open_all(now_ns());
    if (opt.proto != UDP) /* fail fast; UDP can tell only once requests were sent */
        check_reached();

    cap = SIZE_MAX;
    looping = true;
    win_start = now + opt.warmup;
    win_end = win_start + opt.duration;
    for (size_t i = 0; i < opt.conns; i++) {
        if (conns[i].state == PARKED)
            next_request(&conns[i], now_ns());
        else
            queue_push(&conns[i]);
    }
    drain(run_window());
    check_reached();
    return opt.duration;
}

static uint64_t run_churn(void)
{
    looping = true;
    win_start = now_ns() + opt.warmup;
    win_end = win_start + opt.duration;
    queue_all();
    uint64_t now = run_window();
    check_reached();
    drain(now);
    return opt.duration;
}

/* The opening, until every connection was answered (or --timeout), not the hold. */
static uint64_t run_idle(void)
{
    cap = OPEN_WINDOW;
    win_start = 0;
    win_end = UINT64_MAX;
    uint64_t start = now_ns(), now = open_all(start);
    check_reached();

    printf("HELD %" PRIu64 "\n", requests);
    fflush(stdout);
    run_until(now + opt.hold, NULL);
    return now - start;
}

static uint64_t run_burst(void)
{
    win_start = 0;
    win_end = UINT64_MAX;
    burst_start = now_ns();
    uint64_t elapsed = open_all(burst_start) - burst_start;
    check_reached();
    return elapsed;
}

/* ---- Main -------------------------------------------------------------------------------- */

static void raise_fd_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
        die("getrlimit: %s", strerror(errno));
    rl.rlim_cur = rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
        die("setrlimit: %s", strerror(errno));
    if (opt.conns + opt.slow + SPARE_FDS > rl.rlim_cur)
        usage_error("--conns %zu and --slow %zu need more file descriptors than the limit of %llu",
                    opt.conns, opt.slow, (unsigned long long)rl.rlim_cur);
}

static void print_result(uint64_t elapsed)
{
    double secs = (double)elapsed / 1e9;
    printf("{\"mode\":\"%s\",\"proto\":\"%s\",\"conns\":%zu,\"size\":%zu,\"duration\":%.3f,"
           "\"requests\":%" PRIu64 ",\"errors\":%" PRIu64 ",\"rps\":%.1f,\"lat_us\":",
           mode_names[opt.mode], proto_names[opt.proto], opt.conns, opt.size, secs, requests,
           total(counted), secs > 0 ? (double)requests / secs : 0.0);
    if (hist_count)
        printf("{\"p50\":%.1f,\"p90\":%.1f,\"p99\":%.1f,\"max\":%.1f}",
               hist_percentile(50) / 1e3, hist_percentile(90) / 1e3, hist_percentile(99) / 1e3,
               (double)hist_max / 1e3);
    else
        printf("{\"p50\":null,\"p90\":null,\"p99\":null,\"max\":null}");
    if (opt.mode == IDLE)
        printf(",\"answered\":%" PRIu64, requests);
    if (opt.mode == BURST)
        printf(",\"served_in_deadline\":%" PRIu64 ",\"served\":%" PRIu64, in_deadline, requests);
    if (opt.slow)
        printf(",\"slow\":{\"clients\":%zu,\"interval\":%.3f,\"connected_start\":%zu,"
               "\"connected_min\":%zu,\"connected_mean\":%.1f,\"connected_max\":%zu,"
               "\"connected_end\":%zu,\"cuts\":%" PRIu64 ",\"errors\":%" PRIu64
               ",\"bytes\":%" PRIu64 "}",
               opt.slow, (double)opt.slow_interval / 1e9, sw.at_start, sw.min,
               sw.area / (double)opt.duration, sw.max, sw.at_end, sw.cuts, sw.errors, sw.bytes);
    printf("}\n");
    fflush(stdout);

    report_errors(counted, "");
    report_errors(uncounted, " outside the measured window, not counted");
    report_errors(slow_errors, " connecting slow clients");
    if (stale)
        fprintf(stderr, "loadgen: %" PRIu64 " late UDP replies ignored\n", stale);
}

int main(int argc, char **argv)
{
    parse_args(argc, argv);
    raise_fd_limit();
    resolve();

    req = malloc(opt.size);
    conns = calloc(opt.conns, sizeof *conns);
    slows = calloc(opt.slow ? opt.slow : 1, sizeof *slows);
    if (!req || !conns || !slows)
        die("out of memory");
    memset(req, 'x', opt.size - 1);
    req[opt.size - 1] = '\n';
    if (opt.proto == UDP)
        seq_digits = opt.size - 1 < SEQ_DIGITS ? opt.size - 1 : SEQ_DIGITS;
    for (size_t i = 0; i < opt.conns; i++) {
        conns[i].fd = -1;
        link_init(&conns[i].timer);
        link_init(&conns[i].queued);
    }
    for (size_t i = 0; i < opt.slow; i++) {
        slows[i].fd = -1;
        slows[i].slow = true;
        link_init(&slows[i].timer);
        link_init(&slows[i].queued);
    }
    link_init(&timers);
    link_init(&queue);
    link_init(&backlog);
    link_init(&slow_waiting);
    link_init(&ticks);
    if (opt.mode == ECHO || opt.mode == CHURN)
        conn_timeout = opt.proto == UDP ? opt.udp_timeout : opt.timeout;
    ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0)
        die("epoll_create1: %s", strerror(errno));

    static uint64_t (*const run[])(void) = { run_echo, run_churn, run_idle, run_burst };
    uint64_t elapsed = run[opt.mode]();
    for (size_t i = 0; i < opt.conns; i++)
        conn_close(&conns[i]);
    for (size_t i = 0; i < opt.slow; i++)
        slow_close(&slows[i]);
    print_result(elapsed);
    return 0;
}
