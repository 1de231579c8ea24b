/*
 * A C client of examples/rpc/demo.x on libtirpc, through the client stubs that
 * `rpcgen -N demo.x` generates (demo_clnt.c), at an explicit address: no rpcbind.
 *
 *   demo_client [-a none|sys] tcp|udp HOST PORT VERS CALL [ARG...]
 *
 *   CALL    null
 *           add A B
 *           echo TEXT
 *           complex NAME BIG UBIG OPT SHAPE VALUES BLOB FIXED4 LIST FLAG D F
 *   OPT     an int, or - for none
 *   SHAPE   circle:RADIUS, rect:W:H, or kind:N (the default arm, discriminant N)
 *   VALUES  ints separated by commas, or - for none; LIST likewise (the nodes' values)
 *   BLOB    hex bytes, or - for none; FIXED4 six hex digits (its three bytes)
 *
 * VERS 2 calls through the DEMO_V2 stubs (null, add), any other through DEMO_V1's.
 * Prints one line on stdout, in a fixed form:
 *   NULL | ADD <int> | ECHO <text> |
 *   COMPLEX values_sum=.. opt_present=.. opt_value=.. big_plus_one=.. ubig=.. area=..
 *           list_len=.. blob_len=.. summary=<the rest of the line>
 * On an RPC failure it prints clnt_sperror() on stderr and exits 1; bad usage exits 2.
 */
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "demo.h"

static void usage(void)
{
	fprintf(stderr, "usage: demo_client [-a none|sys] tcp|udp HOST PORT VERS CALL [ARG...]\n");
	exit(2);
}

static long long number(const char *text)
{
	char *end;
	long long value = strtoll(text, &end, 0);
	if (*text == '\0' || *end != '\0')
		usage();
	return value;
}

/* Splits "1,2,3" (or "-": none) into a malloc'd array of ints; returns the count. */
static u_int ints(const char *text, int **out)
{
	u_int count = 0;
	char *copy, *item, *save = NULL;
	*out = NULL;
	if (strcmp(text, "-") == 0)
		return 0;
	copy = strdup(text);
	*out = calloc(strlen(text) + 1, sizeof(int));
	if (copy == NULL || *out == NULL)
		exit(3);
	for (item = strtok_r(copy, ",", &save); item != NULL; item = strtok_r(NULL, ",", &save))
		(*out)[count++] = (int)number(item);
	free(copy);
	return count;
}

static u_int hex(const char *text, char **out)
{
	size_t length = strlen(text), i;
	*out = NULL;
	if (strcmp(text, "-") == 0)
		return 0;
	if (length % 2 != 0)
		usage();
	*out = malloc(length / 2 + 1);
	if (*out == NULL)
		exit(3);
	for (i = 0; i < length / 2; i++) {
		unsigned int byte;
		if (sscanf(text + 2 * i, "%2x", &byte) != 1)
			usage();
		(*out)[i] = (char)byte;
	}
	return (u_int)(length / 2);
}

static void shape_of(const char *text, shape *s)
{
	if (strncmp(text, "circle:", 7) == 0) {
		s->kind = SHAPE_CIRCLE;
		s->shape_u.radius = (int)number(text + 7);
	} else if (sscanf(text, "rect:%d:%d", &s->shape_u.r.w, &s->shape_u.r.h) == 2) {
		s->kind = SHAPE_RECT;
	} else if (strncmp(text, "kind:", 5) == 0) {
		s->kind = (shape_kind)number(text + 5);
	} else {
		usage();
	}
}

static void complex_arg_of(char **argv, complex_arg *arg)
{
	static int opt;
	int *values;
	u_int count, i;
	char *fixed;

	memset(arg, 0, sizeof *arg);
	arg->name = argv[0];
	arg->big = (quad_t)strtoll(argv[1], NULL, 0);
	arg->ubig = (u_quad_t)strtoull(argv[2], NULL, 0);
	if (strcmp(argv[3], "-") != 0) {
		opt = (int)number(argv[3]);
		arg->opt = &opt;
	}
	shape_of(argv[4], &arg->s);
	arg->values.values_len = ints(argv[5], &arg->values.values_val);
	arg->blob.blob_len = hex(argv[6], &arg->blob.blob_val);
	if (hex(argv[7], &fixed) != 3)
		usage();
	memcpy(arg->fixed4, fixed, 3);
	count = ints(argv[8], &values);
	for (i = count; i > 0; i--) { /* built from the tail, so the list keeps the order */
		node *item = calloc(1, sizeof *item);
		if (item == NULL)
			exit(3);
		item->value = values[i - 1];
		item->next = arg->list;
		arg->list = item;
	}
	arg->flag = (bool_t)number(argv[9]);
	arg->d = strtod(argv[10], NULL);
	arg->f = strtof(argv[11], NULL);
}

static void fail(CLIENT *clnt)
{
	fprintf(stderr, "%s\n", clnt_sperror(clnt, "demo_client"));
	exit(1);
}

int main(int argc, char **argv)
{
	const char *auth = "none", *call;
	struct sockaddr_in address;
	struct timeval total = {5, 0}, retry = {1, 0};
	int sock = RPC_ANYSOCK, opt, tcp;
	u_long vers;
	CLIENT *clnt;

	while ((opt = getopt(argc, argv, "+a:")) != -1) {
		if (opt != 'a')
			usage();
		auth = optarg;
	}
	argv += optind;
	argc -= optind;
	if (argc < 5)
		usage();
	tcp = strcmp(argv[0], "tcp") == 0;
	if (!tcp && strcmp(argv[0], "udp") != 0)
		usage();
	memset(&address, 0, sizeof address);
	address.sin_family = AF_INET;
	address.sin_port = htons((unsigned short)number(argv[2]));
	if (inet_pton(AF_INET, argv[1], &address.sin_addr) != 1)
		usage();
	vers = (u_long)number(argv[3]);
	call = argv[4];
	argv += 5;
	argc -= 5;

	clnt = tcp ? clnttcp_create(&address, DEMO_PROG, vers, &sock, 0, 0)
		   : clntudp_create(&address, DEMO_PROG, vers, retry, &sock);
	if (clnt == NULL) {
		fprintf(stderr, "%s\n", clnt_spcreateerror("demo_client"));
		return 1;
	}
	clnt_control(clnt, CLSET_TIMEOUT, (char *)&total);
	if (strcmp(auth, "sys") == 0) {
		auth_destroy(clnt->cl_auth);
		clnt->cl_auth = authunix_create_default();
		if (clnt->cl_auth == NULL) {
			fprintf(stderr, "demo_client: authunix_create_default failed\n");
			return 1;
		}
	} else if (strcmp(auth, "none") != 0) {
		usage();
	}

	if (strcmp(call, "null") == 0 && argc == 0) {
		if ((vers == DEMO_V2 ? demo2_null_2(clnt) : demo_null_1(clnt)) == NULL)
			fail(clnt);
		printf("NULL\n");
	} else if (strcmp(call, "add") == 0 && argc == 2) {
		int a = (int)number(argv[0]), b = (int)number(argv[1]);
		int *sum = vers == DEMO_V2 ? demo2_add_2(a, b, clnt) : demo_add_1(a, b, clnt);
		if (sum == NULL)
			fail(clnt);
		printf("ADD %d\n", *sum);
	} else if (strcmp(call, "echo") == 0 && argc == 1) {
		char **text = demo_echo_1(argv[0], clnt);
		if (text == NULL)
			fail(clnt);
		printf("ECHO %s\n", *text);
		clnt_freeres(clnt, (xdrproc_t)xdr_wrapstring, (caddr_t)text);
	} else if (strcmp(call, "complex") == 0 && argc == 12) {
		complex_arg arg;
		complex_res *res;
		complex_arg_of(argv, &arg);
		res = demo_complex_1(arg, clnt);
		if (res == NULL)
			fail(clnt);
		printf("COMPLEX values_sum=%d opt_present=%d opt_value=%d big_plus_one=%lld ubig=%llu "
		       "area=%d list_len=%d blob_len=%d summary=%s\n",
		       res->values_sum, res->opt_present, res->opt_value, (long long)res->big_plus_one,
		       (unsigned long long)res->ubig, res->area, res->list_len, res->blob_len,
		       res->summary);
		clnt_freeres(clnt, (xdrproc_t)xdr_complex_res, (caddr_t)res);
	} else {
		usage();
	}
	auth_destroy(clnt->cl_auth);
	clnt_destroy(clnt);
	return 0;
}
