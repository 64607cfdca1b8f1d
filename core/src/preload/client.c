#include <dirent.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#include "../addr.h"
#include "../sockutil.h"
#include "client.h"
#include "key.h"
#include "wfpr/error.h"

#define REPLY_TIMEOUT_S 5

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
static int broker = -1;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;
/* the registration key, when given; otherwise REGISTER reads the broker's key file */
static uint8_t key[WIRE_KEY_SIZE];
static bool have_key;

/* The broker's page (wire.h), mapped read-only once this process has
 * registered a proxy; NULL before. */
static const wire_page *page;

/* Counts the broker connections this process has lost: a thread's last
 * answer (below) from an earlier one is not used. */
static uint64_t broker_epoch;

/* The last QUERY's answer (records and context) of this thread: a proxy
 * QUERYs the records, then the context, then SETs the same records on its
 * outbound socket and connects, all on one worker's thread; the second and
 * third need no trip to the broker, nor does the fourth while the broker's
 * onward answer holds. One per thread, so that the workers of one proxy do
 * not take each other's answer away. Read and written under the lock. */
static _Thread_local struct {
	bool valid;
	uint64_t epoch; /* broker_epoch when the answer came */
	uint64_t socket; /* the proxy socket's SO_COOKIE: a later one with the same tuple is another connection */
	int protocol;
	struct sockaddr_storage local, peer;
	size_t record_len, context_len;
	uint32_t onward;                         /* WIRE_ONWARD_PERMIT or _REDIRECT (to onward_to) ... */
	struct sockaddr_storage onward_remote;   /* ... toward this address ... */
	struct sockaddr_storage onward_to;
	uint64_t generation;                     /* ... while the page's generation is this */
	uint8_t blob[WFPR_RECORD_MAX_SIZE + WFPR_CONTEXT_MAX_SIZE];
} last;

/* Notices not yet told to the broker (a socket that closed, or that took
 * its record from a push): they ride along with the next QUERY, go just
 * before any other request, or go alone when WIRE_NOTICE_MAX are kept (a
 * wakeup of the broker per connection saved). Every request of this
 * process comes after them, and a notice touches only its own record
 * (wire.h): the next connection on the same tuple, whose ISSUE may come
 * in between, is left alone. */
static wire_notice notices[WIRE_NOTICE_MAX];
static size_t n_notices;

/* Records the broker pushed (wire.h), until this process's QUERY for
 * their connection takes them: PUSHED_MAX at most, the oldest make room,
 * and none is taken after PUSHED_TTL_NS (the QUERY asks the broker then,
 * as it does when the push has not come yet).
 *
 * A push must never answer for a later connection on the same tuple (the
 * kernel reuses one at once when the proxy's side holds the TIME_WAIT).
 * The broker pushes a connection's record before it answers any QUERY of
 * it, and a tuple has one connection at a time, which the proxy accepts,
 * QUERYs and closes before the next can exist. So every push for a tuple
 * goes when the broker answers a QUERY for it (what is kept is that
 * connection's, or older), and when the proxy closes a socket of that
 * tuple; what is left is the next connection's. */
#define PUSHED_MAX 64
#define PUSHED_TTL_NS (500 * 1000000LL)
typedef struct pushed {
	int64_t at_ns;
	bool held; /* a waiting QUERY took it (below), and the broker was told */
	wire_reply rp;
	uint8_t blob[]; /* rp.blob_len bytes: the record, then the context */
} pushed;
static pushed *stash[PUSHED_MAX];

/* Overlapped TCP QUERYs of a proxy's sockets whose push has not come yet
 * (wfpr__client_query_async): answered from the push once a thread takes it
 * off the socket (any caller of the client, or the watcher, which looks
 * every millisecond while any wait), or asked of the broker after
 * PEND_ASK_NS without one. */
#define PEND_ASK_NS (10 * 1000000LL)
typedef struct pend {
	struct pend *next;
	uint64_t socket;
	struct sockaddr_storage local, peer;
	uint32_t flags;
	int64_t since;
	client_done_fn done;
	void *arg;
} pend;
static pend *pends;
static uint64_t pushes_kept, pushes_matched; /* pushes kept, and how many of them the waiting QUERYs saw */
static pthread_cond_t pend_added = PTHREAD_COND_INITIALIZER;
static bool watching; /* the watcher thread runs */
static uint64_t drained; /* pushes taken off the socket, told with every request */
static uint64_t told;    /* drained as the broker last heard it */

/* The UDP sources a proxy socket asked about, each with the page's
 * udp_issued as it was before the question: while the count has not
 * moved, no record was issued since, so no new flow can have started from
 * that source, and its next datagram needs no question. A slot that
 * another source takes only costs a question. */
#define SEEN_SLOTS 65536 /* a few collide among ten thousand sources */
static struct seen {
	uint64_t socket;
	uint64_t issued;
	struct sockaddr_in6 from; /* an IPv4 source as a sockaddr_in */
} *seen; /* SEEN_SLOTS of them, made when a proxy first asks (never in the shim) */

/* The ROUTE answers this process keeps (wire.h, WIRE_ROUTE_KEEP): a
 * fresh TCP connect's, by the remote address as the program gave it, while
 * the page's generation is kept_generation. A permit then connects without
 * asking; a redirect, while credit lasts, tells the broker (an announced
 * ROUTE) and connects to the kept target at once. A slot that another
 * address takes only costs a question. */
#define KEPT_SLOTS 64
static struct kept_route {
	struct sockaddr_storage remote; /* ss_family 0: free */
	uint32_t action;
	struct sockaddr_storage target;
} kept[KEPT_SLOTS];
static uint64_t kept_generation;
static uint32_t credit; /* announced ROUTEs the broker allows this process, as it counts them */

/* What this process keeps of a broker connection that is gone: the
 * registrations went with it, and the page with them (a broker started
 * again has another). */
static void forget_broker_state(void)
{
	last.valid = false;
	broker_epoch++; /* the other threads' last answers too */
	n_notices = 0;
	credit = 0;
	memset(kept, 0, sizeof(kept));
	drained = told = 0;
	for (size_t i = 0; i < PUSHED_MAX; i++) {
		free(stash[i]);
		stash[i] = NULL;
	}
	while (pends) { /* their pushes went with the connection */
		pend *p = pends;
		pends = p->next;
		p->done(p->arg, WFPR_WSAENETDOWN, NULL, 0);
		free(p);
	}
	if (page) {
		munmap((void *)page, sizeof(wire_page));
		if (seen) /* used only with a page */
			memset(seen, 0, SEEN_SLOTS * sizeof(*seen));
	}
	page = NULL;
}

static void child_after_fork(void)
{
	/* a forked child opens its own connection; another thread may have held the lock at fork */
	pthread_mutex_init(&lock, NULL);
	pthread_cond_init(&pend_added, NULL);
	pends = NULL; /* the parent's: it answers them */
	watching = false;
	if (broker >= 0)
		close(broker);
	broker = -1;
	forget_broker_state(); /* the parent's */
}

static void install_atfork(void)
{
	pthread_atfork(NULL, NULL, child_after_fork);
}

int wfpr__client_set_path(const char *p)
{
	pthread_once(&atfork_once, install_atfork);
	if (p && strlen(p) >= sizeof(path))
		return WFPR_WSAEINVAL;
	pthread_mutex_lock(&lock);
	if (broker >= 0)
		close(broker);
	broker = -1;
	forget_broker_state(); /* that broker dropped them with the connection */
	if (p)
		strcpy(path, p);
	else
		path[0] = '\0';
	pthread_mutex_unlock(&lock);
	return 0;
}

bool wfpr__client_enabled(void)
{
	return __atomic_load_n(&path[0], __ATOMIC_RELAXED) != '\0';
}

/* Locked. */
static int open_broker(void)
{
	if (broker >= 0)
		return 0;
	forget_broker_state(); /* a new connection: a new client to the broker */
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
	return 0;
}

/* Locked. If msg (n bytes) is a push, keep it (true); else false. */
static bool keep_push(const uint8_t *msg, size_t n)
{
	wire_reply rp;
	memcpy(&rp, msg, sizeof(rp));
	if (!rp.push)
		return false;
	drained++;
	if (rp.blob_len != n - sizeof(rp) || rp.action > rp.blob_len || rp.err)
		return true; /* not what the broker sends: dropped */
	addr_unmap(&rp.to);
	addr_unmap(&rp.from);
	size_t at = 0;
	for (size_t i = 0; i < PUSHED_MAX; i++) {
		if (!stash[i] || (addr_equal(&stash[i]->rp.to, &rp.to) && addr_equal(&stash[i]->rp.from, &rp.from))) {
			at = i; /* free, or the same tuple's (a later connection's) */
			break;
		}
		if (stash[i]->at_ns < stash[at]->at_ns)
			at = i;
	}
	pushed *p = malloc(sizeof(*p) + rp.blob_len);
	if (!p)
		return true;
	p->at_ns = wfpr__now_ns();
	p->held = false;
	pushes_kept++;
	p->rp = rp;
	memcpy(p->blob, msg + sizeof(rp), rp.blob_len);
	free(stash[at]);
	stash[at] = p;
	return true;
}

/* Locked. Take the pushes waiting on the socket, without blocking. */
static void drain_pushes(void)
{
	uint8_t msg[sizeof(wire_reply) + WIRE_REPLY_BLOB_MAX];
	while (broker >= 0) {
		int got[WIRE_MAX_FDS];
		size_t n_got;
		ssize_t n = wfpr__wire_receive(broker, msg, sizeof(msg), got, &n_got, MSG_DONTWAIT);
		for (size_t i = 0; i < n_got && i < WIRE_MAX_FDS; i++)
			close(got[i]);
		if (n < 0 && errno == EAGAIN)
			return;
		if (n < (ssize_t)sizeof(wire_reply) || !keep_push(msg, (size_t)n)) {
			close(broker); /* gone, or a reply nobody waits for: the connection is not sound */
			broker = -1;
			forget_broker_state();
		}
	}
}

/* Locked. The push for the connection from peer to local, fresh enough,
 * left in the stash; else NULL. */
static pushed *find_push(const struct sockaddr_storage *local, const struct sockaddr_storage *peer)
{
	struct sockaddr_storage l = *local, p = *peer;
	addr_unmap(&l);
	addr_unmap(&p);
	int64_t now = wfpr__now_ns();
	for (size_t i = 0; i < PUSHED_MAX; i++)
		if (stash[i] && addr_equal(&stash[i]->rp.to, &l) && addr_equal(&stash[i]->rp.from, &p) &&
		    now - stash[i]->at_ns < PUSHED_TTL_NS)
			return stash[i];
	return NULL;
}

/* Locked. The push for the connection from peer to local, fresh enough,
 * taken out of the stash; else NULL. Any other for that tuple goes. */
static pushed *take_push(const struct sockaddr_storage *local, const struct sockaddr_storage *peer)
{
	struct sockaddr_storage l = *local, p = *peer;
	addr_unmap(&l);
	addr_unmap(&p);
	int64_t now = wfpr__now_ns();
	pushed *taken = NULL;
	for (size_t i = 0; i < PUSHED_MAX; i++) {
		pushed *got = stash[i];
		if (!got || !addr_equal(&got->rp.to, &l) || !addr_equal(&got->rp.from, &p))
			continue;
		stash[i] = NULL;
		if (!taken && now - got->at_ns < PUSHED_TTL_NS)
			taken = got;
		else
			free(got);
	}
	return taken;
}

/* Locked. Map the page that came with a REGISTER's reply (once; fd is closed). */
static void map_page(int fd)
{
	struct stat st;
	if (!page && fstat(fd, &st) == 0 && (size_t)st.st_size >= sizeof(wire_page)) {
		void *m = mmap(NULL, sizeof(wire_page), PROT_READ, MAP_SHARED, fd, 0);
		if (m != MAP_FAILED)
			page = m;
	}
	close(fd);
}

/* Locked. One request (carrying n_fds descriptors), then (unless rp is
 * NULL) its reply; blob_out gets the reply's blob (cap bytes at most), and
 * a page that comes with it is mapped. Any failure drops the connection, so
 * a late reply can never be taken for the next one's. */
static int exchange(wire_request *rq, const void *blob, const int *fds, size_t n_fds, wire_reply *rp,
                    uint8_t *blob_out, size_t cap)
{
	uint8_t msg[sizeof(wire_request) + WIRE_REPLY_BLOB_MAX];
	if (!path[0])
		return WFPR_WSAENETDOWN;
	if (rq->blob_len > WIRE_BLOB_MAX)
		return WFPR_WSAEINVAL;
	int rc = open_broker();
	if (rc != 0)
		return rc;
	if (n_notices && (rq->type == WIRE_QUERY || rq->type == WIRE_NOTICE) && !rq->blob_len) {
		blob = notices; /* they ride along */
		rq->blob_len = (uint32_t)(n_notices * sizeof(wire_notice));
		n_notices = 0;
	} else if (n_notices) {
		/* before anything else: they take effect when they happened */
		wire_request notice = {.type = WIRE_NOTICE, .protocol = IPPROTO_TCP};
		int sent = exchange(&notice, NULL, NULL, 0, NULL, NULL, 0);
		if (sent != 0)
			return sent;
	}
	rq->magic = WIRE_MAGIC;
	rq->drained = told = drained;
	memcpy(msg, rq, sizeof(*rq));
	if (rq->blob_len)
		memcpy(msg + sizeof(*rq), blob, rq->blob_len);
	size_t len = sizeof(*rq) + rq->blob_len;
	ssize_t n = wfpr__wire_send(broker, msg, len, fds, n_fds, 0);
	if (n == (ssize_t)len && !rp)
		return 0;
	while (n == (ssize_t)len) {
		int got[WIRE_MAX_FDS];
		size_t n_got;
		n = wfpr__wire_receive(broker, msg, sizeof(msg), got, &n_got, 0);
		for (size_t i = 0; i < n_got && i < WIRE_MAX_FDS; i++) {
			if (i == 0 && n_got == 1 && (rq->type == WIRE_REGISTER || rq->type == WIRE_ROUTE))
				map_page(got[0]);
			else
				close(got[i]);
		}
		if (n >= (ssize_t)sizeof(*rp) && keep_push(msg, (size_t)n)) {
			n = (ssize_t)len; /* a push came first: the reply is still to come */
			continue;
		}
		if (n >= (ssize_t)sizeof(*rp)) {
			memcpy(rp, msg, sizeof(*rp));
			if (rp->blob_len == (size_t)n - sizeof(*rp) && rp->blob_len <= cap) {
				if (rp->blob_len)
					memcpy(blob_out, msg + sizeof(*rp), rp->blob_len);
				return 0;
			}
		}
		break;
	}
	close(broker);
	broker = -1;
	return WFPR_WSAENETDOWN;
}

/* Locked. A notice for the broker, sent with the next request (alone, once WIRE_NOTICE_MAX wait). */
static void notify(uint32_t kind, uint64_t socket, int protocol, const struct sockaddr_storage *local,
                   const struct sockaddr_storage *peer, const uint8_t *token)
{
	wire_notice *n = &notices[n_notices++];
	*n = (wire_notice){.kind = kind, .socket = socket, .protocol = (uint32_t)protocol, .local = *local, .peer = *peer};
	if (token)
		memcpy(n->token, token, WFPR_TOKEN_SIZE);
	if (n_notices == WIRE_NOTICE_MAX) {
		wire_request rq = {.type = WIRE_NOTICE, .protocol = IPPROTO_TCP};
		exchange(&rq, NULL, NULL, 0, NULL, NULL, 0); /* takes the kept ones along */
	}
}

/* Locked. The broker pushes only while it knows of room on this socket
 * (WIRE_PUSH_WINDOW): tell it of the pushes taken, with the notices kept. */
static void tell_drained(void)
{
	if (drained - told >= WIRE_PUSH_WINDOW / 2) {
		wire_request rq = {.type = WIRE_NOTICE, .protocol = IPPROTO_TCP};
		exchange(&rq, NULL, NULL, 0, NULL, NULL, 0);
	}
}

static void unlock(void);

static int call(wire_request *rq, const void *blob, wire_reply *rp, uint8_t *blob_out, size_t cap)
{
	pthread_mutex_lock(&lock);
	int rc = exchange(rq, blob, NULL, 0, rp, blob_out, cap);
	unlock();
	return rc != 0 ? rc : rp ? rp->err : 0;
}

/* Locked. */
static bool last_valid(void)
{
	return last.valid && last.epoch == broker_epoch;
}

static bool is_last(uint64_t socket, int protocol, const struct sockaddr_storage *local,
                    const struct sockaddr_storage *peer)
{
	return last_valid() && last.socket == socket && last.protocol == protocol && addr_equal(&last.local, local) &&
	       addr_equal(&last.peer, peer);
}

/* Locked. The last QUERY's onward answer (WIRE_ONWARD_*), if this ROUTE
 * is the one it was about and it still holds: the records just QUERYed,
 * without annotations, from an unbound socket, to the original
 * destination, with no proxy come or gone since; else 0. */
static uint32_t onward_answer(int protocol, const struct sockaddr_storage *remote, uint16_t bound,
                              const uint8_t *records, size_t records_len, size_t notes_len)
{
	struct sockaddr_storage to = *remote;
	addr_unmap(&to);
	bool holds = page && last_valid() && last.protocol == protocol && !notes_len && !bound && records_len &&
	             last.record_len == records_len && memcmp(last.blob, records, records_len) == 0 &&
	             addr_equal(&to, &last.onward_remote) &&
	             __atomic_load_n(&page->generation, __ATOMIC_ACQUIRE) == last.generation;
	return holds ? last.onward : 0;
}

/* Locked. NULL without memory: the source is asked about. */
static struct seen *seen_slot(uint64_t socket, const struct sockaddr_storage *from)
{
	if (!seen && !(seen = calloc(SEEN_SLOTS, sizeof(*seen))))
		return NULL;
	uint64_t h = 1469598103934665603ull ^ socket;
	const uint8_t *p = (const uint8_t *)from;
	for (size_t i = 0; i < addr_len(from); i++)
		h = (h ^ p[i]) * 1099511628211ull;
	return &seen[h % SEEN_SLOTS];
}

static bool seen_is(const struct seen *s, uint64_t socket, const struct sockaddr_storage *from)
{
	return s->socket == socket && memcmp(&s->from, from, addr_len(from)) == 0;
}

/* Locked. The slot where a fresh TCP connect's ROUTE to remote is kept, or
 * NULL when this one cannot be kept (with records, annotations, or from a
 * bound socket). */
static struct kept_route *kept_slot(int protocol, const struct sockaddr_storage *remote,
                                    const struct sockaddr_storage *local, size_t blob_len)
{
	if (protocol != IPPROTO_TCP || blob_len || !addr_unbound(local) || addr_len(remote) > sizeof(struct sockaddr_in6))
		return NULL;
	uint64_t h = 1469598103934665603ull;
	const uint8_t *p = (const uint8_t *)remote;
	for (size_t i = 0; i < addr_len(remote); i++)
		h = (h ^ p[i]) * 1099511628211ull;
	return &kept[h % KEPT_SLOTS];
}

/* Locked. The kept answer for this slot's remote, if it still holds. */
static const struct kept_route *kept_answer(const struct kept_route *k, const struct sockaddr_storage *remote)
{
	if (!k || !page || __atomic_load_n(&page->generation, __ATOMIC_ACQUIRE) != kept_generation ||
	    k->remote.ss_family != remote->ss_family || memcmp(&k->remote, remote, addr_len(remote)) != 0)
		return NULL;
	return k->action == WFPR_ACTION_PERMIT || credit ? k : NULL;
}

/* Locked. Keep a ROUTE's answer the broker says may be kept. */
static void keep_answer(struct kept_route *k, const struct sockaddr_storage *remote, const wire_reply *rp)
{
	credit = rp->err == 0 && (rp->onward & WIRE_ROUTE_KEEP) ? rp->credit : 0; /* the broker's count, from now */
	if (!k || !page || rp->err || !(rp->onward & WIRE_ROUTE_KEEP))
		return;
	if (rp->generation != kept_generation) {
		memset(kept, 0, sizeof(kept));
		kept_generation = rp->generation;
	}
	memset(&k->remote, 0, sizeof(k->remote));
	memcpy(&k->remote, remote, addr_len(remote));
	k->action = rp->action;
	k->target = rp->target;
}

int wfpr__client_route(int fd, uint64_t cookie, int protocol, const struct sockaddr_storage *remote, const uint8_t *records,
                 size_t records_len, const uint8_t *notes, size_t notes_len, struct sockaddr_storage *target,
                 bool *redirected, client_connect_fn connect_fn, int *connect_result)
{
	if (records_len > WIRE_BLOB_MAX - WFPR__WIRE_NOTES_MAX || notes_len > WFPR__WIRE_NOTES_MAX)
		return WFPR_WSAEINVAL;
	wire_request rq = {.type = WIRE_ROUTE, .protocol = (uint32_t)protocol, .a = *remote,
	                   .blob_len = (uint32_t)(records_len + notes_len), .notes_len = (uint32_t)notes_len,
	                   .socket = cookie ? cookie : wfpr__socket_cookie(fd)};
	wire_reply rp;
	uint8_t blob[WIRE_BLOB_MAX];
	if (records_len)
		memcpy(blob, records, records_len);
	if (notes_len)
		memcpy(blob + records_len, notes, notes_len);
	*redirected = false;
	*target = *remote;
	uint16_t bound = wfpr__socket_local(fd, &rq.b);

	/* ROUTE and its ISSUE go out on one connection, under the lock: the
	 * broker keeps the decision between them. */
	pthread_mutex_lock(&lock);
	uint32_t onward = onward_answer(protocol, remote, bound, records, records_len, notes_len);
	if (onward & WIRE_ONWARD_PERMIT) {
		last.valid = false; /* the record is used now */
		pthread_mutex_unlock(&lock);
		return 0;
	}
	struct kept_route *slot = kept_slot(protocol, remote, &rq.b, rq.blob_len);
	const struct kept_route *k = kept_answer(slot, remote);
	int rc;
	if (k && k->action == WFPR_ACTION_PERMIT) {
		pthread_mutex_unlock(&lock);
		return 0; /* the broker would say so again */
	} else if (k || (onward & WIRE_ONWARD_REDIRECT)) {
		/* told before the connect, so before the proxy can ask about it */
		rq.flags |= WIRE_ROUTE_ANNOUNCED;
		rc = exchange(&rq, blob, NULL, 0, NULL, NULL, 0);
		credit -= k ? 1 : 0; /* a proxy's onward ROUTE spends none */
		rp = (wire_reply){.action = WFPR_ACTION_REDIRECT, .target = k ? k->target : last.onward_to};
	} else {
		rc = exchange(&rq, blob, NULL, 0, &rp, NULL, 0);
		if (rc == 0)
			keep_answer(slot, remote, &rp);
	}
	if (rc == 0)
		rc = rp.err;
	if (records_len)
		last.valid = false; /* the record is used now: a SET elsewhere must ask the broker */
	if (rc == 0 && rp.action == WFPR_ACTION_REDIRECT) {
		*target = rp.target;
		*redirected = true;
		wire_request issue = {.type = WIRE_ISSUE, .protocol = (uint32_t)protocol};
		if (protocol == IPPROTO_TCP && connect_fn) {
			/* connect first: the kernel picks the port with the whole 4-tuple in view (a
			 * bind would hold ports in TIME_WAIT); the proxy's QUERY waits for the ISSUE */
			*connect_result = connect_fn(fd, (const struct sockaddr *)target, addr_len(target));
			int saved = errno;
			if (*connect_result == 0 || saved == EINPROGRESS) {
				wfpr__socket_local(fd, &issue.b);
				exchange(&issue, NULL, &fd, 1, NULL, NULL, 0); /* no reply; the socket shows the broker the address */
			}
			errno = saved;
		} else if (wfpr__socket_bind_for_redirect(fd, protocol, target, &issue.b) < 0) {
			rc = wfpr_err_from_errno(errno);
		} else {
			/* UDP: answered once the record is stored and counted in the page's
			 * udp_issued, which the proxy reads when this socket's first datagram
			 * comes; TCP (bound, not connected here): no reply, it is queued
			 * before anything this socket sends to the proxy */
			wire_reply done = {.err = 0};
			bool udp = protocol == IPPROTO_UDP;
			int sent = exchange(&issue, NULL, &fd, 1, udp ? &done : NULL, NULL, 0);
			if (udp)
				rc = sent != 0 ? sent : done.err;
		}
	}
	unlock();
	return rc;
}

/* Locked. The QUERY's answer (client.h); when ask is false, a TCP QUERY
 * whose answer has not been pushed is not asked of the broker:
 * WFPR_WSAEWOULDBLOCK. */
static int query_locked(uint64_t socket, int protocol, const struct sockaddr_storage *local,
                        const struct sockaddr_storage *peer, uint32_t flags, uint8_t *out, size_t cap, size_t *len,
                        bool ask)
{
	wire_request rq = {.type = WIRE_QUERY, .protocol = (uint32_t)protocol, .flags = flags, .a = *local, .b = *peer,
	                   .socket = socket};
	wire_reply rp;
	int rc = 0;
	*len = 0;
	bool first = flags & WIRE_QUERY_FIRST_DATAGRAM;
	struct seen *slot = first && page ? seen_slot(socket, peer) : NULL;
	uint64_t issued = page ? __atomic_load_n(&page->udp_issued, __ATOMIC_ACQUIRE) : 0;
	if (slot && seen_is(slot, socket, peer) && slot->issued == issued)
		return WFPR_FWP_E_NOT_FOUND; /* nothing issued since this source was asked about */
	pushed *got = NULL;
	if (!first && page && !is_last(socket, protocol, local, peer) && protocol == IPPROTO_TCP) {
		drain_pushes();
		if ((got = take_push(local, peer))) {
			rp = got->rp; /* the broker's answer, before the question */
			memcpy(last.blob, got->blob, got->rp.blob_len);
			if (!got->held)
				notify(WIRE_NOTICE_HOLD, socket, protocol, local, peer, rp.token);
			free(got);
			tell_drained();
		} else if (!ask) {
			return WFPR_WSAEWOULDBLOCK;
		}
	}
	if (got || first || !is_last(socket, protocol, local, peer)) {
		last.valid = false;
		if (!got)
			rc = exchange(&rq, NULL, NULL, 0, &rp, last.blob, sizeof(last.blob));
		if (!got && rc == 0 && protocol == IPPROTO_TCP)
			free(take_push(local, peer)); /* answered: a push for it that came first is stale */
		if (rc == 0 && slot) {
			slot->socket = socket;
			slot->issued = issued;
			memcpy(&slot->from, peer, addr_len(peer));
		}
		if (rc == 0)
			rc = rp.err;
		if (rc == 0 && rp.action <= rp.blob_len) {
			last.valid = true; /* exchange wrote the blob in place */
			last.epoch = broker_epoch;
			last.socket = socket;
			last.protocol = protocol;
			last.local = *local;
			last.peer = *peer;
			last.record_len = rp.action;
			last.context_len = rp.blob_len - rp.action;
			last.onward = rp.onward & (WIRE_ONWARD_PERMIT | WIRE_ONWARD_REDIRECT);
			last.onward_remote = rp.target;
			last.onward_to = rp.onward_to;
			last.generation = rp.generation;
		} else if (rc == 0) {
			rc = WFPR_WSAENETDOWN; /* not what the broker says */
		}
	}
	if (rc == 0) {
		bool context = flags & WIRE_QUERY_CONTEXT;
		*len = context ? last.context_len : last.record_len;
		if (*len > cap)
			rc = WFPR_WSAEINVAL;
		else
			memcpy(out, last.blob + (context ? last.record_len : 0), *len);
	}
	return rc;
}

/* Locked. Answer the waiting QUERYs whose push has come; with ask_due,
 * ask the broker for those that waited PEND_ASK_NS. The push stays for the
 * socket's next QUERY (the context, as a proxy asks next), held: the
 * broker is told now, as for a QUERY. */
static void answer_pends(bool ask_due)
{
	int64_t now = wfpr__now_ns();
	pushes_matched = pushes_kept;
	for (pend **pp = &pends; *pp;) {
		pend *p = *pp;
		pushed *got = find_push(&p->local, &p->peer);
		if (!got && !(ask_due && now - p->since >= PEND_ASK_NS)) {
			pp = &p->next;
			continue;
		}
		*pp = p->next;
		uint8_t blob[WIRE_REPLY_BLOB_MAX];
		const uint8_t *answer = blob;
		size_t len = 0;
		int rc = 0;
		if (got) {
			bool context = p->flags & WIRE_QUERY_CONTEXT;
			answer = got->blob + (context ? got->rp.action : 0);
			len = context ? got->rp.blob_len - got->rp.action : got->rp.action;
			if (!got->held)
				notify(WIRE_NOTICE_HOLD, p->socket, IPPROTO_TCP, &p->local, &p->peer, got->rp.token);
			got->held = true;
			tell_drained();
		} else {
			rc = query_locked(p->socket, IPPROTO_TCP, &p->local, &p->peer, p->flags, blob, sizeof(blob), &len, true);
		}
		p->done(p->arg, rc, answer, len);
		free(p);
		pp = &pends; /* notify may have sent, and taken more pushes off the socket */
	}
}

/* The thread that takes pushes off the socket, every millisecond, while
 * QUERYs wait for them (a poll of the socket would wake it for every push,
 * which cost more than it saved under load). */
static void *watch_pushes(void *unused)
{
	(void)unused;
	pthread_mutex_lock(&lock);
	for (;;) {
		while (!pends)
			pthread_cond_wait(&pend_added, &lock);
		pthread_mutex_unlock(&lock);
		poll(NULL, 0, 1);
		pthread_mutex_lock(&lock);
		drain_pushes();
		answer_pends(true);
	}
	return NULL;
}

/* Every call that may have taken pushes off the socket ends here. */
static void unlock(void)
{
	if (pends && pushes_kept != pushes_matched)
		answer_pends(false); /* their pushes may have come with this call */
	pthread_mutex_unlock(&lock);
}

int wfpr__client_query(uint64_t socket, int protocol, const struct sockaddr_storage *local, const struct sockaddr_storage *peer,
                 uint32_t flags, uint8_t *out, size_t cap, size_t *len)
{
	if ((flags & WIRE_QUERY_FIRST_DATAGRAM) && addr_len(peer) > sizeof(struct sockaddr_in6))
		return WFPR_WSAEINVAL;
	pthread_mutex_lock(&lock);
	int rc = query_locked(socket, protocol, local, peer, flags, out, cap, len, true);
	unlock();
	return rc;
}

int wfpr__client_query_async(uint64_t socket, int protocol, const struct sockaddr_storage *local,
                             const struct sockaddr_storage *peer, uint32_t flags, uint8_t *out, size_t cap,
                             size_t *len, client_done_fn done, void *arg)
{
	if (flags & WIRE_QUERY_FIRST_DATAGRAM)
		return WFPR_WSAEINVAL;
	pthread_mutex_lock(&lock);
	int rc = query_locked(socket, protocol, local, peer, flags, out, cap, len, false);
	pend *p = rc == WFPR_WSAEWOULDBLOCK && done ? malloc(sizeof(*p)) : NULL;
	if (p && !watching) {
		pthread_t t;
		sigset_t all, old;
		sigfillset(&all);
		pthread_sigmask(SIG_SETMASK, &all, &old); /* the watcher takes no signal of the program's */
		watching = pthread_create(&t, NULL, watch_pushes, NULL) == 0;
		pthread_sigmask(SIG_SETMASK, &old, NULL);
		if (watching)
			pthread_detach(t);
	}
	if (p && watching) {
		*p = (pend){.next = pends, .socket = socket, .local = *local, .peer = *peer, .flags = flags,
		            .since = wfpr__now_ns(), .done = done, .arg = arg};
		pends = p;
		pthread_cond_signal(&pend_added);
		rc = WFPR_WSA_IO_PENDING;
	} else if (p) {
		free(p);
		rc = query_locked(socket, protocol, local, peer, flags, out, cap, len, true); /* no thread: wait here */
	} else if (rc == WFPR_WSAEWOULDBLOCK && done) {
		rc = WFPR_WSAENOBUFS;
	}
	unlock();
	return rc;
}

void wfpr__client_abort(uint64_t socket)
{
	pthread_mutex_lock(&lock);
	for (pend **pp = &pends; *pp;) {
		pend *p = *pp;
		if (p->socket != socket) {
			pp = &p->next;
			continue;
		}
		*pp = p->next;
		p->done(p->arg, WFPR_WSA_OPERATION_ABORTED, NULL, 0);
		free(p);
	}
	pthread_mutex_unlock(&lock);
}

int wfpr__client_check(uint64_t socket, const uint8_t *blob, size_t len)
{
	if (len > WIRE_BLOB_MAX)
		return WFPR_WSAEINVAL;
	pthread_mutex_lock(&lock);
	bool known = last_valid() && last.record_len == len && memcmp(last.blob, blob, len) == 0;
	pthread_mutex_unlock(&lock);
	if (known)
		return 0; /* just QUERYed, unused yet: the broker checks it again when it routes */
	wire_request rq = {.type = WIRE_CHECK, .blob_len = (uint32_t)len, .socket = socket};
	wire_reply rp;
	return call(&rq, blob, &rp, NULL, 0);
}

void wfpr__client_release(uint64_t socket, int protocol, const struct sockaddr_storage *local, const struct sockaddr_storage *peer)
{
	pthread_mutex_lock(&lock);
	if (is_last(socket, protocol, local, peer))
		last.valid = false;
	if (protocol == IPPROTO_TCP)
		free(take_push(local, peer)); /* one for this tuple that no QUERY took: the next connection's must not be it */
	notify(WIRE_NOTICE_RELEASE, socket, protocol, local, peer, NULL);
	unlock();
}

int wfpr__client_set_key(const uint8_t k[WIRE_KEY_SIZE])
{
	pthread_mutex_lock(&lock);
	have_key = k != NULL;
	if (k)
		memcpy(key, k, WIRE_KEY_SIZE);
	else
		memset(key, 0, WIRE_KEY_SIZE);
	pthread_mutex_unlock(&lock);
	return 0;
}

/* This process's socket that takes connections at a, or -1: the broker
 * registers an address only for a caller that holds such a socket. A TCP
 * listener comes first. */
static int find_listener(const struct sockaddr_storage *a)
{
	DIR *d = opendir("/proc/self/fd");
	if (!d)
		return -1;
	int found = -1;
	for (struct dirent *de; (de = readdir(d));) {
		int fd = atoi(de->d_name);
		if (de->d_name[0] == '.' || fd == dirfd(d) || !wfpr__socket_takes(fd, a))
			continue;
		found = fd;
		if (wfpr__socket_protocol(fd) == IPPROTO_TCP)
			break;
	}
	closedir(d);
	return found;
}

int wfpr__client_register(const char *name, const struct sockaddr_storage *address,
                          const struct sockaddr_storage *address6, uint32_t weight, const char *match,
                          uint32_t flags, uint8_t out_id[WFPR_REDIRECTOR_ID_SIZE])
{
	size_t match_len = match ? strlen(match) + 1 : 0;
	wire_request rq = {.type = WIRE_REGISTER, .flags = flags, .a = *address, .weight = weight,
	                   .blob_len = (uint32_t)match_len};
	if (address6)
		rq.b = *address6;
	wire_reply rp;
	if (!name || strlen(name) >= sizeof(rq.name) || match_len > WIRE_BLOB_MAX)
		return WFPR_WSAEINVAL;
	strcpy(rq.name, name);
	int fds[WIRE_MAX_FDS];
	size_t n_fds = 0;
	if ((fds[n_fds] = find_listener(address)) >= 0)
		n_fds++;
	if (address6 && (fds[n_fds] = find_listener(address6)) >= 0)
		n_fds++;
	pthread_mutex_lock(&lock);
	char key_path[sizeof(path) + 8];
	if (have_key)
		memcpy(rq.key, key, WIRE_KEY_SIZE);
	else if (wfpr__key_path(key_path, sizeof(key_path), path) == 0)
		wfpr__key_read_file(key_path, rq.key); /* none: the broker refuses (WSAEACCES), if it is there */
	int rc = exchange(&rq, match, fds, n_fds, &rp, NULL, 0);
	pthread_mutex_unlock(&lock);
	if (rc == 0)
		rc = rp.err;
	if (rc == 0)
		memcpy(out_id, rp.id, WFPR_REDIRECTOR_ID_SIZE);
	return rc;
}

int wfpr__client_name(const uint8_t id[WFPR_REDIRECTOR_ID_SIZE], char *out, size_t len)
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
