#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>
#include <unistd.h>
#include "../sockutil.h"
#include "client.h"
#include "wfpr/error.h"

#define REPLY_TIMEOUT_S 5

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
static int broker = -1;
static pid_t owner; /* the process that opened broker: a forked child opens its own */
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

static void child_after_fork(void)
{
	/* another thread may have held the lock at fork: the child starts clean */
	pthread_mutex_init(&lock, NULL);
	if (broker >= 0)
		close(broker);
	broker = -1;
}

static void install_atfork(void)
{
	pthread_atfork(NULL, NULL, child_after_fork);
}

int client_set_path(const char *p)
{
	pthread_once(&atfork_once, install_atfork);
	if (p && strlen(p) >= sizeof(path))
		return WFPR_WSAEINVAL;
	pthread_mutex_lock(&lock);
	if (broker >= 0)
		close(broker);
	broker = -1;
	if (p)
		strcpy(path, p);
	else
		path[0] = '\0';
	pthread_mutex_unlock(&lock);
	return 0;
}

bool client_enabled(void)
{
	return __atomic_load_n(&path[0], __ATOMIC_RELAXED) != '\0';
}

/* Locked. */
static int open_broker(void)
{
	if (broker >= 0 && owner == getpid())
		return 0;
	if (broker >= 0)
		close(broker);
	broker = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (broker < 0)
		return WFPR_WSAENETDOWN;
	struct sockaddr_un sun = {.sun_family = AF_UNIX};
	strcpy(sun.sun_path, path);
	struct timeval tv = {.tv_sec = REPLY_TIMEOUT_S};
	if (setsockopt(broker, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) < 0 ||
	    setsockopt(broker, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) < 0 ||
	    connect(broker, (struct sockaddr *)&sun, sizeof(sun)) < 0) {
		close(broker);
		broker = -1;
		return WFPR_WSAENETDOWN;
	}
	owner = getpid();
	return 0;
}

/* Locked. One request, then (unless rp is NULL) its reply; blob_out gets
 * the reply's blob (cap bytes at most). Any failure drops the connection,
 * so a late reply can never be taken for the next one's. */
static int exchange(wire_request *rq, const void *blob, wire_reply *rp, uint8_t *blob_out, size_t cap)
{
	uint8_t msg[sizeof(wire_request) + WIRE_BLOB_MAX];
	if (!path[0])
		return WFPR_WSAENETDOWN;
	if (rq->blob_len > WIRE_BLOB_MAX)
		return WFPR_WSAEINVAL;
	int rc = open_broker();
	if (rc != 0)
		return rc;
	rq->magic = WIRE_MAGIC;
	memcpy(msg, rq, sizeof(*rq));
	if (rq->blob_len)
		memcpy(msg + sizeof(*rq), blob, rq->blob_len);
	size_t len = sizeof(*rq) + rq->blob_len;
	ssize_t n;
	do
		n = send(broker, msg, len, MSG_NOSIGNAL);
	while (n < 0 && errno == EINTR);
	if (n == (ssize_t)len && !rp)
		return 0;
	if (n == (ssize_t)len) {
		do
			n = recv(broker, msg, sizeof(msg), 0);
		while (n < 0 && errno == EINTR);
		if (n >= (ssize_t)sizeof(*rp)) {
			memcpy(rp, msg, sizeof(*rp));
			if (rp->blob_len == (size_t)n - sizeof(*rp) && rp->blob_len <= cap) {
				if (rp->blob_len)
					memcpy(blob_out, msg + sizeof(*rp), rp->blob_len);
				return 0;
			}
		}
	}
	close(broker);
	broker = -1;
	return WFPR_WSAENETDOWN;
}

static int call(wire_request *rq, const void *blob, wire_reply *rp, uint8_t *blob_out, size_t cap)
{
	pthread_mutex_lock(&lock);
	int rc = exchange(rq, blob, rp, blob_out, cap);
	pthread_mutex_unlock(&lock);
	return rc != 0 ? rc : rp ? rp->err : 0;
}

int client_route(int fd, int protocol, const struct sockaddr_storage *remote, const uint8_t *records,
                 size_t records_len, struct sockaddr_storage *target, bool *redirected)
{
	wire_request rq = {.type = WIRE_ROUTE, .protocol = (uint32_t)protocol, .a = *remote,
	                   .blob_len = (uint32_t)records_len};
	wire_reply rp;
	*redirected = false;
	*target = *remote;
	socket_local(fd, &rq.b);

	/* ROUTE and its ISSUE go out back to back on one connection: the broker
	 * keeps the decision between them. */
	pthread_mutex_lock(&lock);
	int rc = exchange(&rq, records, &rp, NULL, 0);
	if (rc == 0)
		rc = rp.err;
	if (rc == 0 && rp.action == WFPR_ACTION_REDIRECT) {
		if (socket_bind_for_redirect(fd, protocol, &rp.target, &rq.b) < 0) {
			rc = wfpr_err_from_errno(errno);
		} else {
			wire_request issue = {.type = WIRE_ISSUE, .protocol = (uint32_t)protocol, .b = rq.b};
			wire_reply ok;
			rc = exchange(&issue, NULL, &ok, NULL, 0);
			if (rc == 0)
				rc = ok.err;
		}
		if (rc == 0) {
			*target = rp.target;
			*redirected = true;
		}
	}
	pthread_mutex_unlock(&lock);
	return rc;
}

int client_query(int protocol, const struct sockaddr_storage *local, const struct sockaddr_storage *peer,
                 uint32_t flags, uint8_t *out, size_t cap, size_t *len)
{
	wire_request rq = {.type = WIRE_QUERY, .protocol = (uint32_t)protocol, .flags = flags, .a = *local, .b = *peer};
	wire_reply rp;
	int rc = call(&rq, NULL, &rp, out, cap);
	*len = rc == 0 ? rp.blob_len : 0;
	return rc;
}

int client_check(const uint8_t *blob, size_t len)
{
	if (len > WIRE_BLOB_MAX)
		return WFPR_WSAEINVAL;
	wire_request rq = {.type = WIRE_CHECK, .blob_len = (uint32_t)len};
	wire_reply rp;
	return call(&rq, blob, &rp, NULL, 0);
}

void client_release(int protocol, const struct sockaddr_storage *local, const struct sockaddr_storage *peer)
{
	wire_request rq = {.type = WIRE_RELEASE, .protocol = (uint32_t)protocol, .a = *local, .b = *peer};
	call(&rq, NULL, NULL, NULL, 0);
}

int client_register(const char *name, const struct sockaddr_storage *address, uint8_t out_id[WFPR_REDIRECTOR_ID_SIZE])
{
	wire_request rq = {.type = WIRE_REGISTER, .a = *address};
	wire_reply rp;
	if (!name || strlen(name) >= sizeof(rq.name))
		return WFPR_WSAEINVAL;
	strcpy(rq.name, name);
	int rc = call(&rq, NULL, &rp, NULL, 0);
	if (rc == 0)
		memcpy(out_id, rp.id, WFPR_REDIRECTOR_ID_SIZE);
	return rc;
}

int client_name(const uint8_t id[WFPR_REDIRECTOR_ID_SIZE], char *out, size_t len)
{
	wire_request rq = {.type = WIRE_NAME};
	wire_reply rp;
	memcpy(rq.id, id, sizeof(rq.id));
	int rc = call(&rq, NULL, &rp, NULL, 0);
	if (rc == 0) {
		rp.name[sizeof(rp.name) - 1] = '\0';
		if (strlen(rp.name) >= len)
			return WFPR_WSAEINVAL;
		strcpy(out, rp.name);
	}
	return rc;
}
