/* libFuzzer target for the broker's request parser and handlers. The input
 * is a sequence of messages (a 2-byte length, then the bytes) sent to a
 * live broker over its Unix socket, from a client that has registered a
 * redirector; the first byte of each message says whether to fix up the
 * magic and the blob length, so that most messages get past the framing.
 * Nothing may crash or leak, a WIRE_CHECK of made-up bytes must never pass,
 * and the broker must keep serving (a fresh client can still register). */
#include <arpa/inet.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include "../../core/src/preload/broker_poll.h"
#include "../../core/src/preload/wire.h"

static wfpr_broker *broker;
static struct sockaddr_un where = {.sun_family = AF_UNIX};

static int connect_client(void)
{
	int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&where, sizeof(where)) < 0)
		abort();
	wfpr__broker_poll(broker, 0); /* accept it */
	return fd;
}

static void drain(int fd, bool *check_passed, bool was_check)
{
	uint8_t reply[sizeof(wire_reply) + WIRE_REPLY_BLOB_MAX];
	ssize_t n;
	while ((n = recv(fd, reply, sizeof(reply), 0)) >= (ssize_t)sizeof(wire_reply)) {
		wire_reply rp;
		memcpy(&rp, reply, sizeof(rp));
		if (was_check && rp.err == 0)
			*check_passed = true;
	}
}

static int register_one(int fd, const char *name, uint16_t port)
{
	wire_request rq = {.magic = WIRE_MAGIC, .type = WIRE_REGISTER};
	struct sockaddr_in *a = (struct sockaddr_in *)&rq.a;
	a->sin_family = AF_INET;
	a->sin_port = htons(port);
	a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	snprintf(rq.name, sizeof(rq.name), "%s", name);
	send(fd, &rq, sizeof(rq), 0);
	wfpr__broker_poll(broker, 0);
	wire_reply rp;
	return recv(fd, &rp, sizeof(rp), 0) == (ssize_t)sizeof(rp) ? rp.err : -1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (!broker) {
		snprintf(where.sun_path, sizeof(where.sun_path), "/tmp/wfpr-fuzz-broker-%d.sock", (int)getpid());
		wfpr_broker_options o = WFPR_BROKER_OPTIONS_INIT;
		o.path = where.sun_path;
		if (wfpr_broker_new(&broker, &o) != 0)
			abort();
	}
	int fd = connect_client();
	if (register_one(fd, "fuzz", 40000) != 0)
		abort();
	uint8_t msg[sizeof(wire_request) + WIRE_BLOB_MAX];
	while (size >= 3) {
		size_t len = (size_t)data[0] << 8 | data[1];
		bool fix = data[2] & 1;
		data += 3;
		size -= 3;
		if (len > size)
			len = size;
		if (len > sizeof(msg))
			len = sizeof(msg);
		memset(msg, 0, sizeof(msg));
		memcpy(msg, data, len);
		data += len;
		size -= len;
		size_t n = len;
		wire_request rq;
		if (fix) {
			if (n < sizeof(rq))
				n = sizeof(rq);
			memcpy(&rq, msg, sizeof(rq));
			rq.magic = WIRE_MAGIC;
			rq.type = 1 + rq.type % 7;
			rq.blob_len = (uint32_t)(n - sizeof(rq));
			memcpy(msg, &rq, sizeof(rq));
		} else {
			memcpy(&rq, msg, n < sizeof(rq) ? n : sizeof(rq));
		}
		if (send(fd, msg, n, 0) < 0) {
			close(fd); /* the broker hung up on a malformed message: go on with a new client */
			fd = connect_client();
			continue;
		}
		wfpr__broker_poll(broker, 0);
		bool check_passed = false;
		drain(fd, &check_passed, n >= sizeof(rq) && rq.type == WIRE_CHECK);
		if (check_passed && rq.blob_len)
			abort(); /* made-up bytes must never pass as a record the broker issued */
	}
	close(fd);
	wfpr__broker_poll(broker, 0); /* the hang-up: the client's redirector and records go */
	int probe = connect_client();
	if (register_one(probe, "probe", 40001) != 0)
		abort(); /* the broker still serves, and "fuzz" was freed with its client */
	close(probe);
	wfpr__broker_poll(broker, 0);
	return 0;
}
