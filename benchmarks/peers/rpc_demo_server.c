/*
 * The rpcgen C server of examples/rpc/demo.x, for the ONC RPC benchmark (issue 13), without
 * rpcbind: rpcgen's dispatchers (`rpcgen -N -m demo.x`, no main), the procedures of
 * tests/rpc_c/demo_server_impl.c, and this main, which serves one transport on 127.0.0.1:PORT
 * and registers the dispatchers with protocol 0, so that libtirpc does not call the portmapper.
 * One thread, libtirpc's svc_run(): what an rpcgen server is.
 *
 *   rpc_demo_server --proto tcp|udp --host 127.0.0.1 --port P
 *
 * Ready to serve, it says where on stderr: "rpc_demo_server: listening on tcp://HOST:PORT",
 * the port the kernel chose with --port 0. (The bench builds it: benchmarks/rpc_bench.py,
 * build(); so does tests/test_rpcgen_c.py, which calls it with servekit's generated clients.)
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "demo.h"

void demo_prog_1(struct svc_req *rqstp, SVCXPRT *transp);
void demo_prog_2(struct svc_req *rqstp, SVCXPRT *transp);

static void usage(void)
{
    fputs("usage: rpc_demo_server --proto tcp|udp --host ADDR --port P\n", stderr);
    exit(2);
}

int main(int argc, char **argv)
{
    const char *proto = NULL, *host = "127.0.0.1";
    int port = -1;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--proto") == 0)
            proto = argv[i + 1];
        else if (strcmp(argv[i], "--host") == 0)
            host = argv[i + 1];
        else if (strcmp(argv[i], "--port") == 0)
            port = atoi(argv[i + 1]);
        else
            usage();
    }
    if (!proto || port < 0 || port > 65535 || (strcmp(proto, "tcp") && strcmp(proto, "udp")))
        usage();
    int udp = strcmp(proto, "udp") == 0;
    int fd = socket(AF_INET, udp ? SOCK_DGRAM : SOCK_STREAM, 0), one = 1;
    struct sockaddr_in sin = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    if (fd < 0 || inet_pton(AF_INET, host, &sin.sin_addr) != 1 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
        bind(fd, (struct sockaddr *)&sin, sizeof sin) < 0 || (!udp && listen(fd, 1024) < 0)) {
        perror("rpc_demo_server: socket");
        return 1;
    }
    /* libtirpc does not listen on a socket it is given bound: listen() above. 0, 0: its
     * default buffer sizes. */
    SVCXPRT *transp = udp ? svcudp_create(fd) : svctcp_create(fd, 0, 0);
    if (!transp) {
        fprintf(stderr, "rpc_demo_server: cannot create the %s transport\n", proto);
        return 1;
    }
    /* Protocol 0: no portmapper, no rpcbind. */
    if (!svc_register(transp, DEMO_PROG, DEMO_V1, demo_prog_1, 0) ||
        !svc_register(transp, DEMO_PROG, DEMO_V2, demo_prog_2, 0)) {
        fputs("rpc_demo_server: svc_register failed\n", stderr);
        return 1;
    }
    socklen_t size = sizeof sin;
    if (getsockname(fd, (struct sockaddr *)&sin, &size) < 0) {
        perror("rpc_demo_server: getsockname");
        return 1;
    }
    fprintf(stderr, "rpc_demo_server: listening on %s://%s:%u\n", proto, host,
            (unsigned)ntohs(sin.sin_port));
    svc_run();
    fputs("rpc_demo_server: svc_run returned\n", stderr);
    return 1;
}
