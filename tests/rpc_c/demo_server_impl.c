/*
 * The procedures of examples/rpc/demo.x in C, with the semantics of issue 13 (the same
 * as examples/rpc/demo.py), linked with what `rpcgen -N demo.x` generates (demo_svc.c,
 * demo_xdr.c) into the C server that tests/test_rpc_interop.py holds servekit against.
 *
 * Arithmetic wraps (two's complement), computed in unsigned types so that C's rules
 * define it. Results live in static storage, as rpcgen's servers keep them: the
 * generated dispatcher sends the reply before it frees the arguments.
 */
#include <stdint.h>
#include <stdio.h>

#include "demo.h"

static int wrap32(uint32_t value) { return (int)(int32_t)value; }

void *demo_null_1_svc(struct svc_req *req)
{
	static char nothing;
	(void)req;
	return &nothing;
}

int *demo_add_1_svc(int a, int b, struct svc_req *req)
{
	static int result;
	(void)req;
	result = wrap32((uint32_t)a + (uint32_t)b);
	return &result;
}

char **demo_echo_1_svc(char *text, struct svc_req *req)
{
	static char *result;
	(void)req;
	result = text;
	return &result;
}

complex_res *demo_complex_1_svc(complex_arg arg, struct svc_req *req)
{
	static complex_res result;
	static char summary[512];
	uint32_t sum = 0;
	int length = 0;
	u_int i;
	const node *item;
	(void)req;

	for (i = 0; i < arg.values.values_len; i++)
		sum += (uint32_t)arg.values.values_val[i];
	for (item = arg.list; item != NULL; item = item->next)
		length++;
	result.values_sum = wrap32(sum);
	result.opt_present = arg.opt != NULL;
	result.opt_value = arg.opt != NULL ? *arg.opt : 0;
	result.big_plus_one = (quad_t)((u_quad_t)arg.big + 1);
	result.ubig = arg.ubig;
	switch (arg.s.kind) {
	case SHAPE_CIRCLE:
		result.area = wrap32((uint32_t)arg.s.shape_u.radius * (uint32_t)arg.s.shape_u.radius * 3u);
		break;
	case SHAPE_RECT:
		result.area = wrap32((uint32_t)arg.s.shape_u.r.w * (uint32_t)arg.s.shape_u.r.h);
		break;
	default:
		result.area = -1;
		break;
	}
	result.list_len = length;
	result.blob_len = (int)arg.blob.blob_len;
	snprintf(summary, sizeof summary, "name=%s kind=%d flag=%d d=%.3f f=%.3f fixed=%02x%02x%02x",
		 arg.name, (int)arg.s.kind, (int)arg.flag, arg.d, (double)arg.f,
		 (unsigned char)arg.fixed4[0], (unsigned char)arg.fixed4[1],
		 (unsigned char)arg.fixed4[2]);
	result.summary = summary;
	return &result;
}

void *demo2_null_2_svc(struct svc_req *req)
{
	static char nothing;
	(void)req;
	return &nothing;
}

int *demo2_add_2_svc(int a, int b, struct svc_req *req)
{
	static int result;
	(void)req;
	result = wrap32((uint32_t)a + (uint32_t)b + 1000u);
	return &result;
}
