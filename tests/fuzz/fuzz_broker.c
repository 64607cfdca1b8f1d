/* libFuzzer target for the broker's request parser and handlers, with its
 * credential checks in place. The input is a sequence of messages (a
 * 2-byte length, then the bytes) sent to a live broker over its Unix
 * socket, from a client that has registered a redirector (with the key,
 * and its listening socket); the first byte of each message says whether
 * to fix up the magic and the blob length, so that most messages get past
 * the framing, and which descriptors go with it (none, the listener, a
 * socket connected to it, or both). Nothing may crash or leak (no
 * descriptor either), a WIRE_CHECK of made-up bytes must never pass, a
 * REGISTER without the key must never pass, and the broker must keep
 * serving (a fresh client can still register). */
#include <arpa/inet.h>
#include <dirent.h>
#include <sys/stat.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include "../../core/src/preload/broker_poll.h"
#include "../../core/src/preload/key.h"
#include "../../core/src/preload/wire.h"
#include "wfpr/error.h"

static wfpr_broker *broker;
static struct sockaddr_un where = {.sun_family = AF_UNIX};
static uint8_t key[WIRE_KEY_SIZE];
static int listener = -1, connected = -1; /* a proxy's listening socket, and a client connected to it */
static struct sockaddr_in listening;

static void send_with(int fd, const void *msg, size_t len, const int *fds, size_t n_fds, int *err)
{
	struct iovec iov = {.iov_base = (void *)msg, .iov_len = len};
	union {
		struct cmsghdr align;
		char buf[CMSG_SPACE(2 * sizeof(int))];
	} control;
	struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
	if (n_fds) {
		memset(&control, 0, sizeof(control));
		mh.msg_control = control.buf;
		mh.msg_controllen = CMSG_SPACE(n_fds * sizeof(int));
		struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
		cm->cmsg_level = SOL_SOCKET;
		cm->cmsg_type = SCM_RIGHTS;
		cm->cmsg_len = CMSG_LEN(n_fds * sizeof(int));
		memcpy(CMSG_DATA(cm), fds, n_fds * sizeof(int));
	}
	*err = sendmsg(fd, &mh, 0) < 0;
}

static int connect_client(void)
{
	int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&where, sizeof(where)) < 0)
		abort();
	wfpr__broker_poll(broker, 0); /* accept it */
	return fd;
}

/* The replies; true if one said yes to the request type `type`. */
static bool drain(int fd, uint32_t type)
{
	uint8_t reply[sizeof(wire_reply) + WIRE_REPLY_BLOB_MAX];
	ssize_t n;
	bool passed = false;
	while ((n = recv(fd, reply, sizeof(reply), 0)) >= (ssize_t)sizeof(wire_reply)) {
		wire_reply rp;
		memcpy(&rp, reply, sizeof(rp));
		passed |= rp.err == 0 && (type == WIRE_CHECK || type == WIRE_REGISTER);
	}
	return passed;
}

/* Descriptors of this process open on the listener's or the connected
 * socket: 2 (this test's own) unless the broker kept one a request brought. */
static int copies_of_our_sockets(void)
{
	struct stat l, c, st;
	int n = 0;
	DIR *d = opendir("/proc/self/fd");
	if (!d || fstat(listener, &l) < 0 || fstat(connected, &c) < 0)
		abort();
	for (struct dirent *de; (de = readdir(d));)
		if (de->d_name[0] != '.' && fstatat(dirfd(d), de->d_name, &st, 0) == 0 &&
		    (st.st_ino == l.st_ino || st.st_ino == c.st_ino) && st.st_dev == l.st_dev)
			n++;
	closedir(d);
	return n;
}

/* REGISTER the listener under name, with the key or a wrong one. */
static int register_one(int fd, const char *name, bool right_key)
{
	wire_request rq = {.magic = WIRE_MAGIC, .type = WIRE_REGISTER};
	memcpy(&rq.a, &listening, sizeof(listening));
	snprintf(rq.name, sizeof(rq.name), "%s", name);
	memcpy(rq.key, key, sizeof(key));
	rq.key[0] ^= right_key ? 0 : 1;
	int err;
	send_with(fd, &rq, sizeof(rq), &listener, 1, &err);
	wfpr__broker_poll(broker, 0);
	wire_reply rp;
	return recv(fd, &rp, sizeof(rp), 0) == (ssize_t)sizeof(rp) ? rp.err : -1;
}

static void setup(void)
{
	snprintf(where.sun_path, sizeof(where.sun_path), "/tmp/wfpr-fuzz-broker-%d.sock", (int)getpid());
	wfpr_broker_options o = WFPR_BROKER_OPTIONS_INIT;
	o.path = where.sun_path;
	if (wfpr_broker_new(&broker, &o) != 0 || !wfpr__key_parse(wfpr_broker_key(broker), key))
		abort();
	listening = (struct sockaddr_in){.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t len = sizeof(listening);
	listener = socket(AF_INET, SOCK_STREAM, 0);
	connected = socket(AF_INET, SOCK_STREAM, 0);
	if (bind(listener, (struct sockaddr *)&listening, sizeof(listening)) < 0 || listen(listener, 8) < 0 ||
	    getsockname(listener, (struct sockaddr *)&listening, &len) < 0 ||
	    connect(connected, (struct sockaddr *)&listening, sizeof(listening)) < 0)
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (!broker)
		setup();
	int fd = connect_client();
	if (register_one(fd, "fuzz", false) != WFPR_WSAEACCES || register_one(fd, "fuzz", true) != 0)
		abort(); /* without the key, never */
	uint8_t msg[sizeof(wire_request) + WIRE_BLOB_MAX];
	while (size >= 3) {
		size_t len = (size_t)data[0] << 8 | data[1];
		bool fix = data[2] & 1;
		int both[2] = {listener, connected};
		size_t n_fds = (data[2] >> 1) & 3;
		const int *fds = n_fds == 2 ? &both[1] : both; /* 0: none, 1: the listener, 2: the connected, 3: both */
		n_fds = n_fds == 3 ? 2 : n_fds ? 1 : 0;
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
		int err;
		send_with(fd, msg, n, fds, n_fds, &err);
		if (err) {
			close(fd); /* the broker hung up on a malformed message: go on with a new client */
			fd = connect_client();
			continue;
		}
		wfpr__broker_poll(broker, 0);
		bool passed = drain(fd, n >= sizeof(rq) ? rq.type : 0);
		if (passed && (rq.type == WIRE_REGISTER || rq.blob_len))
			abort(); /* made-up bytes never pass as a record the broker issued, nor as its key */
	}
	close(fd);
	wfpr__broker_poll(broker, 0); /* the hang-up: the client's redirector and records go */
	int probe = connect_client();
	if (register_one(probe, "probe", true) != 0)
		abort(); /* the broker still serves, and "fuzz" was freed with its client */
	close(probe);
	wfpr__broker_poll(broker, 0);
	if (copies_of_our_sockets() != 2)
		abort(); /* the broker kept a descriptor a request brought */ /* the broker kept a descriptor a request brought */
	return 0;
}
