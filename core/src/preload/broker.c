/* The broker: one epoll loop over a SOCK_SEQPACKET listener and its
 * clients. It hosts the layer (core/src/layer.c decides and issues) and
 * keeps the records it issued in the record store (core/src/store.h). */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>
#include "../addr.h"
#include "../layer.h"
#include "../sockutil.h"
#include "../store.h"
#include "wfpr/broker.h"
#include "wfpr/error.h"
#include "wfpr/match.h"
#include "broker_poll.h"
#include "key.h"
#include "wire.h"

#define MAX_ENTRIES 200000
/* The records the programs of one user may have issued and not yet seen
 * go (a quarter of the table): a program that issues without end fills
 * its own user's share, never the others' or the proxies'. */
#define USER_QUOTA (MAX_ENTRIES / 4)
/* A record nobody has queried outlives its connect this long, so a proxy
 * that accepts late still finds it; a UDP record lives while its flow is used. */
#define GRACE_NS (60 * 1000000000LL)

typedef struct proxy {
	struct proxy *next;
	char name[WIRE_NAME_MAX];
	struct sockaddr_storage address;
	struct sockaddr_storage address6; /* the same proxy on IPv6 (AF_UNSPEC: none) */
	pid_t pid;
	wfpr_redirect_handle *handle;
	uint32_t callout;
	uint64_t filter;
	uint64_t owner; /* the client that registered it; it lives as long as that connection */
	bool live;
	wfpr_match match; /* the connections it takes */
	bool match_process; /* match names the process: look it up per connection */
	bool unmodified;    /* an unmodified proxy: its own fresh connects never come back to it */
	bool mutable_match; /* match names what a process can change (its name, its cgroup): no ROUTE is kept */
	bool push;          /* its records are pushed to its client as they are issued */
	wfpr_broker *broker;
} proxy;

typedef struct client {
	struct client *next;
	int fd;
	uint64_t id;
	pid_t pid;
	uid_t uid;
	bool failed; /* found broken while catching up: dropped by the loop */
	bool proxy;  /* it presented the key and registered: its records count against no quota */
	uint64_t pushed, drained; /* pushes sent to it, and taken off its socket (as its last request says) */
	uint32_t credit;   /* announced ROUTEs it may still make (wire.h) ... */
	uint32_t reserved; /* ... of them reserved in its user's quota (a proxy's are not) */
	bool has_page;   /* a ROUTE's reply handed it the page */
	/* between a ROUTE that redirected and its ISSUE */
	bool deciding;
	redirect_decision decision;
	conn_info info;
	uint8_t *records;
	size_t records_len;
	uint8_t notes[WFPR__WIRE_NOTES_MAX]; /* the socket's annotations (info.notes points here) */
} client;

/* A TCP QUERY that came before the ISSUE it needs: the client connects to
 * the proxy before it sends the ISSUE (the kernel picks the port at
 * connect), so the proxy can ask first. The reply waits for the ISSUE, or
 * WAIT_NS at most.
 *
 * A QUERY that finds neither its record nor a client deciding toward its
 * proxy also waits, until two whole passes over the ready sockets have
 * ended: an announced ROUTE goes out before its client's connect, so
 * before the proxy could accept and ask, and such a pass, which starts
 * after the QUERY came, reads it. */
typedef struct waiting {
	struct waiting *next;
	client *c;
	wire_request rq;
	int64_t deadline;
	uint64_t until_pass; /* nonzero: waits until b->passes reaches it (above) */
} waiting;

#define WAIT_NS (2 * 1000000000LL)

/* Room on a client's socket for WIRE_PUSH_WINDOW pushes and the replies
 * it waits for: a push takes under 2 KiB of it (the kernel doubles this,
 * up to its cap, net.core.wmem_max, 208 KiB by default). */
#define PUSH_SNDBUF (WIRE_PUSH_WINDOW * 2048 + 65536)

/* The stats are read from any thread (wfpr_broker_get_stats), as an array of counters. */
_Static_assert(sizeof(wfpr_broker_stats) % sizeof(uint64_t) == 0, "the stats are counters");
#define COUNT(counter) __atomic_add_fetch(&(counter), 1, __ATOMIC_RELAXED)

struct wfpr_broker {
	wfpr_layer *layer;
	char *path;
	int listen_fd, epoll_fd, stop_fd;
	client *clients;
	proxy *proxies;
	uint64_t next_client;
	wfpr_process origin; /* during a ROUTE: the client process the filters test (pid 0: none) */
	uint64_t routing;    /* during a ROUTE: the client that asks */
	wfpr__store *store;
	wfpr_broker_stats stats;
	struct waiting *waiting; /* QUERYs that came before their ISSUE */
	uint64_t passes;         /* the polls whose events were all the ready sockets */
	uint8_t key[WIRE_KEY_SIZE];
	char key_hex[WFPR__KEY_HEX + 1];
	wire_page *page; /* NULL: none could be made, and proxies ask every time */
	int page_fd;     /* sealed against new writable mappings: what REGISTER hands out */
	size_t user_quota;
	struct user_count {
		uid_t uid;
		size_t records;
		size_t reserved; /* its clients' credit: records they may have issued without asking */
	} *users; /* records in the store per user, and reserved, for the quota */
	size_t n_users;
	/* the message being served and the descriptors that came with it */
	int fds[WIRE_MAX_FDS];
	size_t n_fds;
	uint8_t msg[sizeof(wire_request) + WIRE_BLOB_MAX];
};


static bool is_inet(const struct sockaddr_storage *a)
{
	return a->ss_family == AF_INET || a->ss_family == AF_INET6;
}

/* ---- the page ---- */

static void page_open(wfpr_broker *b)
{
	b->page_fd = memfd_create("wfpr-broker-page", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	void *m = MAP_FAILED;
	if (b->page_fd >= 0 && ftruncate(b->page_fd, sizeof(wire_page)) == 0)
		m = mmap(NULL, sizeof(wire_page), PROT_READ | PROT_WRITE, MAP_SHARED, b->page_fd, 0);
	/* the broker's mapping stays writable; nobody can make another */
	if (m != MAP_FAILED && fcntl(b->page_fd, F_ADD_SEALS,
	                             F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_FUTURE_WRITE | F_SEAL_SEAL) == 0) {
		b->page = m;
		return;
	}
	if (m != MAP_FAILED)
		munmap(m, sizeof(wire_page));
	if (b->page_fd >= 0)
		close(b->page_fd);
	b->page_fd = -1;
}

static void page_bump(uint64_t *counter)
{
	__atomic_add_fetch(counter, 1, __ATOMIC_RELEASE);
}

/* A proxy came or went: every onward decision handed out is stale. */
static void proxies_changed(wfpr_broker *b)
{
	if (b->page)
		page_bump(&b->page->generation);
}

/* ---- records ---- */

/* A TCP record lives while the proxy that QUERYed it stays connected (or
 * until it releases it); any other, GRACE_NS after its last use. */
static bool entry_alive(const wfpr__entry *e, int64_t now)
{
	if (e->protocol == IPPROTO_TCP && e->holder)
		return true;
	return now - e->used_ns < GRACE_NS;
}

static bool held_by(wfpr__entry *e, uint64_t client_id)
{
	return e->holder == client_id;
}

/* The live entry that issued exactly this blob, or NULL. */
static wfpr__entry *entry_issued(wfpr_broker *b, const uint8_t *blob, size_t len)
{
	uint8_t token[WFPR_TOKEN_SIZE];
	if (wfpr__layer_check_records(b->layer, blob, len, token) != 0)
		return NULL;
	return wfpr__store_find_issued(b->store, blob, len, token);
}

/* May client c's socket (SO_COOKIE `socket`) SET e? Only the proxy whose
 * socket accepted e's connection (it QUERYed it): a record cut at a hop
 * boundary equals an earlier proxy's live record, which is not this one's.
 * And only once: after a socket connected with it, no other. */
static bool own_record(const wfpr__entry *e, const client *c, uint64_t socket)
{
	return e->holder == c->id && socket && wfpr__entry_usable_by(e, socket);
}

/* The record a proxy's socket (a request's a: local, b: peer, and its
 * cookie) belongs to. */
static wfpr__entry *entry_of(wfpr_broker *b, const wire_request *rq)
{
	struct sockaddr_storage local = rq->a, peer = rq->b;
	addr_unmap(&local);
	addr_unmap(&peer);
	return wfpr__store_find(b->store, (int)rq->protocol, &local, &peer, rq->socket);
}

/* ---- quotas ---- */

static struct user_count *user_of(wfpr_broker *b, uid_t uid, bool add)
{
	for (size_t i = 0; i < b->n_users; i++)
		if (b->users[i].uid == uid)
			return &b->users[i];
	if (!add)
		return NULL;
	struct user_count *grown = realloc(b->users, (b->n_users + 1) * sizeof(*grown));
	if (!grown)
		return NULL;
	b->users = grown;
	b->users[b->n_users] = (struct user_count){.uid = uid};
	return &b->users[b->n_users++];
}

/* May client c have one more record issued? A proxy always may. */
static bool within_quota(wfpr_broker *b, const client *c)
{
	const struct user_count *u = c->proxy ? NULL : user_of(b, c->uid, false);
	return !u || u->records + u->reserved < b->user_quota;
}

/* Client c's credit for announced ROUTEs goes back to its user's quota,
 * all of it, or (spent) one. */
static void credit_return(wfpr_broker *b, client *c, uint32_t n)
{
	uint32_t r = n < c->reserved ? n : c->reserved;
	struct user_count *u = r ? user_of(b, c->uid, false) : NULL;
	if (u)
		u->reserved -= r < u->reserved ? r : u->reserved;
	c->reserved -= r;
	c->credit -= n;
}

/* Grant client c credit for announced ROUTEs, out of its user's quota
 * (half of what is left, so that the user's other programs keep some); how
 * much. A proxy, which has no quota, gets the most. */
static uint32_t credit_grant(wfpr_broker *b, client *c)
{
	struct user_count *u = c->proxy ? NULL : user_of(b, c->uid, true);
	size_t room = WIRE_ROUTE_CREDIT_MAX;
	if (!c->proxy && !u)
		return 0;
	if (u) {
		size_t used = u->records + u->reserved + 1; /* the one this ROUTE is about to issue */
		room = used < b->user_quota ? (b->user_quota - used) / 2 : 0;
		if (room > WIRE_ROUTE_CREDIT_MAX)
			room = WIRE_ROUTE_CREDIT_MAX;
		u->reserved += room;
		c->reserved = (uint32_t)room;
	}
	c->credit = (uint32_t)room;
	return c->credit;
}

static void count_record(wfpr_broker *b, const client *c, wfpr__entry *e)
{
	struct user_count *u = c->proxy ? NULL : user_of(b, c->uid, true);
	if (!u)
		return; /* a proxy's (or out of memory: uncounted) */
	e->quota_uid = (uint32_t)c->uid;
	e->in_quota = true;
	u->records++;
}

static void uncount_record(void *user, const wfpr__entry *e)
{
	struct user_count *u = e->in_quota ? user_of(user, (uid_t)e->quota_uid, false) : NULL;
	if (u && u->records)
		u->records--;
}

/* ---- redirectors ---- */

/* Each registered proxy's callout: send everything to the proxy, except
 * connections to a proxy itself. The layer refuses the redirect where the
 * redirect state forbids it (the proxy's own, or an earlier, hop). */
static wfpr_action classify(void *user, wfpr_connect_request *req)
{
	proxy *p = user;
	wfpr_process *who = &p->broker->origin;
	if (p->match_process && who->pid && (!who->name[0] || !who->exe[0]))
		wfpr_process_fill(who);
	if (!wfpr_match_test(&p->match, req->protocol, &req->remote, who))
		return WFPR_ACTION_PERMIT; /* not its traffic: the next filter is asked */
	if (p->unmodified && p->owner == p->broker->routing)
		return WFPR_ACTION_PERMIT; /* an unmodified proxy's own connect that carries no record */
	/* IPv6 traffic to the proxy's IPv6 address, where it has one: an
	 * IPV6_V6ONLY socket cannot reach an IPv4 one, and a datagram from a
	 * dual-stack socket must come back from the address it went to */
	req->redirect_to = req->remote.ss_family == AF_INET6 && p->address6.ss_family == AF_INET6 ? p->address6 : p->address;
	req->target_pid = p->pid;
	return WFPR_ACTION_REDIRECT;
}

static bool is_proxy_address(const wfpr_broker *b, const struct sockaddr_storage *a)
{
	for (const proxy *p = b->proxies; p; p = p->next)
		if (p->live && (addr_equal(&p->address, a) || addr_equal(&p->address6, a)))
			return true;
	return false;
}

/* A proxy that registers under the name of one that is gone takes its
 * redirector back (same id, same callout): a restarted proxy is the same
 * redirector, and the layer does not grow with restarts. */
/* Did the request bring a socket of the caller's that takes connections
 * at a? A proxy registers only where it listens itself. */
static bool holds_listener(const wfpr_broker *b, const struct sockaddr_storage *a)
{
	for (size_t i = 0; i < b->n_fds; i++)
		if (wfpr__socket_takes(b->fds[i], a))
			return true;
	return false;
}

static int register_proxy(wfpr_broker *b, client *c, const wire_request *rq, const uint8_t *blob, wire_reply *rp)
{
	struct sockaddr_storage address = rq->a, address6 = rq->b;
	wfpr_match match;
	if (!wfpr__key_equal(rq->key, b->key)) {
		COUNT(b->stats.refused_registrations);
		return WFPR_WSAEACCES; /* not given the key by whoever started the broker */
	}
	if (rq->blob_len && (!memchr(blob, '\0', rq->blob_len) || wfpr_match_parse(&match, (const char *)blob, NULL, 0) != 0))
		return WFPR_WSAEINVAL;
	if (!rq->blob_len)
		memset(&match, 0, sizeof(match));
	addr_unmap(&address);
	if (!is_inet(&address) || addr_port(&address) == 0 || !memchr(rq->name, '\0', sizeof(rq->name)) || !rq->name[0] ||
	    (address6.ss_family != AF_UNSPEC && (address6.ss_family != AF_INET6 || addr_port(&address6) == 0)))
		return WFPR_WSAEINVAL;
	if (address6.ss_family != AF_INET6)
		memset(&address6, 0, sizeof(address6));
	if (!holds_listener(b, &rq->a) || (address6.ss_family && !holds_listener(b, &address6))) {
		COUNT(b->stats.refused_registrations);
		return WFPR_WSAEADDRNOTAVAIL; /* it does not listen there: the address is not its to claim */
	}
	if (is_proxy_address(b, &address) || (address6.ss_family && is_proxy_address(b, &address6)))
		return WFPR_WSAEADDRINUSE;
	proxy *p = NULL;
	for (proxy *o = b->proxies; o; o = o->next) {
		if (o->live && strcmp(o->name, rq->name) == 0)
			return WFPR_WSAEADDRINUSE;
		if (!o->live && strcmp(o->name, rq->name) == 0)
			p = o;
	}
	bool fresh = !p;
	if (fresh && !(p = calloc(1, sizeof(*p))))
		return WFPR_WSAENOBUFS;
	strcpy(p->name, rq->name);
	p->address = address;
	p->address6 = address6;
	p->pid = c->pid;
	p->match = match;
	p->broker = b;
	p->match_process = match.n_uids || match.n_comms || match.n_exes || match.n_cgroups;
	p->unmodified = rq->flags & WIRE_REGISTER_UNMODIFIED;
	p->mutable_match = match.n_comms || match.n_cgroups;
	p->push = (rq->flags & WIRE_REGISTER_PUSH) && !p->unmodified;
	int rc = 0;
	if (fresh) {
		wfpr_callout_options co = WFPR_CALLOUT_OPTIONS_INIT;
		rc = wfpr_redirect_handle_create(&p->handle, b->layer, NULL, rq->name);
		co.name = rq->name;
		co.classify = classify;
		co.user = p;
		co.handle = p->handle;
		if (rc == 0)
			rc = wfpr_callout_register(&p->callout, b->layer, &co);
	}
	if (rc == 0) {
		wfpr_filter_options fo = WFPR_FILTER_OPTIONS_INIT;
		fo.name = rq->name;
		fo.callout_id = p->callout;
		fo.weight = rq->weight; /* highest first; the layer keeps equal ones in registration order */
		rc = wfpr_filter_add(&p->filter, b->layer, &fo);
	}
	if (rc != 0) {
		if (fresh)
			free(p); /* a created handle stays with the layer, unused */
		return rc;
	}
	p->live = true;
	p->owner = c->id;
	c->proxy = true;
	proxies_changed(b);
	if (fresh) {
		p->next = b->proxies;
		b->proxies = p;
	}
	COUNT(b->stats.proxies);
	memcpy(rp->id, wfpr_redirect_handle_id(p->handle), WFPR_REDIRECTOR_ID_SIZE);
	return 0;
}

/* ---- requests ---- */

static void forget_decision(client *c)
{
	if (!c->deciding)
		return;
	wfpr__redirect_decision_cleanup(&c->decision);
	free(c->records);
	c->records = NULL;
	c->records_len = 0;
	c->deciding = false;
}

/* Classify client c's connect (info) that carries records (chain: them
 * decoded, or NULL). The filters test the process of the records' first
 * hop (a proxy passing a connection on), else c's. */
static int classify_for(wfpr_broker *b, const client *c, const conn_info *info, const uint8_t *records,
                        size_t records_len, const wfpr_records *chain, redirect_decision *out)
{
	if (is_proxy_address(b, &info->remote)) {
		memset(out, 0, sizeof(*out));
		out->action = WFPR_ACTION_PERMIT;
		return 0;
	}
	b->origin = (wfpr_process){.pid = (uint32_t)c->pid, .uid = (uint32_t)c->uid};
	if (chain && chain->hop_count && chain->hops[0].process.pid)
		b->origin = chain->hops[0].process;
	b->routing = c->id;
	int rc = wfpr__layer_classify(b->layer, info, records_len ? records : NULL, records_len, out);
	memset(&b->origin, 0, sizeof(b->origin));
	b->routing = 0;
	return rc;
}

/* May client c keep the answer to this ROUTE (WIRE_ROUTE_KEEP)? Asked
 * again, it gets the same answer until a proxy comes or goes: a fresh TCP
 * connect from an unbound socket, unless some proxy's match names what a
 * process can change. Then say so, with credit for announced ROUTEs. */
static void offer_keep(wfpr_broker *b, client *c, const wire_request *rq, const conn_info *info, wire_reply *rp)
{
	if (!b->page || rq->protocol != IPPROTO_TCP || rq->blob_len || !addr_unbound(&info->local))
		return;
	for (const proxy *p = b->proxies; p; p = p->next)
		if (p->live && p->mutable_match)
			return;
	rp->onward = WIRE_ROUTE_KEEP;
	rp->generation = __atomic_load_n(&b->page->generation, __ATOMIC_ACQUIRE);
	rp->credit = credit_grant(b, c);
}

static int route(wfpr_broker *b, client *c, const wire_request *rq, const uint8_t *blob, wire_reply *rp)
{
	bool announced = rq->flags & WIRE_ROUTE_ANNOUNCED;
	bool kept = announced && !rq->blob_len; /* a kept answer's; else a proxy's onward, with its records */
	forget_decision(c);
	if (announced && (rq->protocol != IPPROTO_TCP || (kept ? !c->credit : !c->proxy)))
		return WFPR_WSAEINVAL; /* its ISSUE is refused, and its connection to the proxy reset */
	/* one credit spent, or (the client asks) all it had back: the client keeps count alike */
	if (!announced || kept)
		credit_return(b, c, kept ? 1 : c->credit);
	conn_info info = {.protocol = (int)rq->protocol, .remote = rq->a, .local = rq->b, .pid = c->pid, .uid = c->uid};
	addr_unmap(&info.remote);
	addr_unmap(&info.local);
	if (!is_inet(&info.remote) || !is_inet(&info.local))
		return WFPR_WSAEINVAL; /* an IPv6 socket may talk IPv4 (mapped): the families can differ */
	if (rq->notes_len > WFPR__WIRE_NOTES_MAX || rq->notes_len > rq->blob_len ||
	    (rq->notes_len && rq->notes_len == rq->blob_len))
		return WFPR_WSAEINVAL; /* annotations come with the records they go after */
	size_t records_len = rq->blob_len - rq->notes_len;
	if (records_len) {
		wfpr__entry *e = entry_issued(b, blob, records_len);
		if (!e || !own_record(e, c, rq->socket)) {
			wfpr__layer_count_bad_record(b->layer);
			return WFPR_WSAEINVAL; /* forged, altered, gone, another's, or used */
		}
		e->used_ns = wfpr__now_ns();
		e->consumed_by = rq->socket;
	}
	/* the records were checked above: their first hop names the client */
	wfpr_records *chain = NULL;
	if (records_len && wfpr_records_decode(&chain, blob, records_len) != 0)
		chain = NULL;
	int rc = classify_for(b, c, &info, blob, records_len, chain, &c->decision);
	wfpr_records_free(chain);
	if (rc != 0)
		return rc;
	if (c->decision.action == WFPR_ACTION_BLOCK) {
		rc = c->decision.err;
		wfpr__redirect_decision_cleanup(&c->decision);
		return rc;
	}
	rp->action = c->decision.action;
	if (c->decision.action != WFPR_ACTION_REDIRECT) {
		if (!announced)
			offer_keep(b, c, rq, &info, rp);
		return 0;
	}
	if (!within_quota(b, c)) {
		wfpr__redirect_decision_cleanup(&c->decision);
		COUNT(b->stats.over_quota);
		return WFPR_WSAENOBUFS; /* this user's programs hold their share of the table */
	}
	if (records_len && !(c->records = malloc(records_len))) {
		wfpr__redirect_decision_cleanup(&c->decision);
		return WFPR_WSAENOBUFS;
	}
	if (records_len)
		memcpy(c->records, blob, records_len);
	c->records_len = records_len;
	memcpy(c->notes, blob + records_len, rq->notes_len);
	c->info = info;
	c->info.notes = rq->notes_len ? c->notes : NULL;
	c->info.notes_len = rq->notes_len;
	c->deciding = true;
	rp->target = c->decision.target;
	if (rq->a.ss_family == AF_INET6 && rp->target.ss_family == AF_INET)
		addr_map_v6(&rp->target, &c->decision.target); /* an IPv6 socket reaches an IPv4 proxy mapped */
	if (!announced)
		offer_keep(b, c, rq, &info, rp);
	return 0;
}

static bool answer_waiting(wfpr_broker *b, const wfpr__entry *issued);
static void push(wfpr_broker *b, const wfpr__entry *e);

/* Is the socket that came with an ISSUE the caller's socket that ROUTE
 * redirected: of its protocol, bound at the address the ISSUE names, and
 * connecting or connected to the proxy? A client cannot have a record
 * issued for another's connection (which would replace that one's). */
static bool issuing_socket(const wfpr_broker *b, const client *c, const struct sockaddr_storage *local)
{
	if (b->n_fds != 1 || wfpr__socket_protocol(b->fds[0]) != c->info.protocol)
		return false;
	struct sockaddr_storage bound, peer;
	wfpr__socket_local(b->fds[0], &bound);
	addr_unmap(&bound);
	/* a UDP socket bound to the wildcard address has its source address
	 * once it connects, which it may have done by now */
	if (c->info.protocol == IPPROTO_TCP ? !addr_equal(local, &bound) : !addr_listens_on(local, &bound))
		return false;
	if (c->info.protocol != IPPROTO_TCP)
		return true; /* UDP: bound where it says is all a datagram socket shows */
	socklen_t len = sizeof(peer);
	if (getpeername(b->fds[0], (struct sockaddr *)&peer, &len) == 0) {
		addr_unmap(&peer);
		return addr_equal(&peer, &c->decision.target);
	}
	struct tcp_info ti;
	len = sizeof(ti);
	return getsockopt(b->fds[0], IPPROTO_TCP, TCP_INFO, &ti, &len) == 0 && ti.tcpi_state == TCP_SYN_SENT;
}

static int issue(wfpr_broker *b, client *c, const wire_request *rq)
{
	if (!c->deciding)
		return WFPR_WSAEINVAL;
	c->info.local = rq->b;
	addr_unmap(&c->info.local);
	if (!issuing_socket(b, c, &c->info.local)) {
		forget_decision(c);
		wfpr__layer_count_bad_record(b->layer);
		return WFPR_WSAEINVAL;
	}
	uint8_t *record = NULL, token[WFPR_TOKEN_SIZE];
	size_t record_len = 0;
	int rc = WFPR_WSAEINVAL;
	if (is_inet(&c->info.local) && addr_port(&c->info.local))
		rc = wfpr__layer_issue(b->layer, &c->decision, &c->info, c->records, c->records_len, &record, &record_len, token);
	wfpr__entry *e = NULL;
	if (rc == 0) {
		e = wfpr__store_add(b->store, c->info.protocol, &c->info.local, &c->decision.target, record, record_len,
		                    c->decision.context, c->decision.context_len, token, true);
		c->decision.context = NULL; /* the store owns it now */
		rc = e ? 0 : WFPR_WSAENOBUFS;
		if (e)
			count_record(b, c, e);
		if (e && e->protocol == IPPROTO_UDP && b->page)
			page_bump(&b->page->udp_issued); /* before the reply: the flow's first datagram comes after it */
	}
	forget_decision(c);
	if (e && !(b->waiting && answer_waiting(b, e)) && e->protocol == IPPROTO_TCP)
		push(b, e);
	return rc;
}

#define QUERY_WAITS 1 /* not a wfpr_err: the QUERY was parked */

/* Is some client between a ROUTE that redirected it to this proxy and its
 * ISSUE? Only then can a missing record still come. */
static bool deciding_toward(const wfpr_broker *b, const struct sockaddr_storage *proxy_address)
{
	for (const client *c = b->clients; c; c = c->next)
		if (c->deciding && c->info.protocol == IPPROTO_TCP && addr_port(&c->decision.target) == addr_port(proxy_address) &&
		    addr_ip_matches(&c->decision.target, proxy_address))
			return true;
	return false;
}

/* Did client c register a live proxy that accepts on address a? */
static bool proxy_of(const wfpr_broker *b, const client *c, const struct sockaddr_storage *a)
{
	for (const proxy *p = b->proxies; p; p = p->next)
		if (p->live && p->owner == c->id && (addr_listens_on(&p->address, a) || addr_listens_on(&p->address6, a)))
			return true;
	return false;
}

/* What would the proxy c's ROUTE of e's records, without annotations,
 * from an unbound socket to the original destination get? It is the same
 * classification ROUTE makes, ahead of time: WIRE_ONWARD_PERMIT tells the
 * proxy that it may connect without asking while the generation holds,
 * WIRE_ONWARD_REDIRECT where to connect once it has announced the ROUTE. */
static void decide_onward(wfpr_broker *b, const client *c, const wfpr__entry *e, wire_reply *rp)
{
	wfpr_records *chain = NULL;
	if (!b->page || wfpr_records_decode(&chain, e->record, e->record_len) != 0 || !chain->hop_count) {
		wfpr_records_free(chain);
		return;
	}
	conn_info info = {.protocol = e->protocol, .remote = chain->hops[chain->hop_count - 1].original_remote,
	                  .pid = c->pid, .uid = c->uid, .probe = true};
	info.local.ss_family = info.remote.ss_family; /* the unbound socket's: any address, port 0 */
	redirect_decision d;
	rp->generation = __atomic_load_n(&b->page->generation, __ATOMIC_ACQUIRE);
	if (is_inet(&info.remote) && classify_for(b, c, &info, e->record, e->record_len, chain, &d) == 0) {
		/* a UDP flow's ISSUE has a reply: it is not announced */
		if (d.action == WFPR_ACTION_PERMIT || (d.action == WFPR_ACTION_REDIRECT && e->protocol == IPPROTO_TCP)) {
			rp->onward = d.action == WFPR_ACTION_PERMIT ? WIRE_ONWARD_PERMIT : WIRE_ONWARD_REDIRECT;
			rp->target = info.remote;
			rp->onward_to = d.target;
			if (info.remote.ss_family == AF_INET6 && d.target.ss_family == AF_INET)
				addr_map_v6(&rp->onward_to, &d.target); /* as route() answers an IPv6 socket */
		}
		wfpr__redirect_decision_cleanup(&d);
	}
	wfpr_records_free(chain);
}

/* The proxy c's socket took e: e lives while c holds it (or until it
 * releases it), and belongs to that socket's connection. */
static void hold(wfpr__entry *e, const client *c, uint64_t socket)
{
	e->used_ns = wfpr__now_ns();
	if (!e->holder) {
		e->holder = c->id;
		e->holder_socket = socket;
	}
}

/* What a QUERY of the proxy c's about e answers (a push too): records
 * then context into out, their lengths in rp, and the onward answer. */
static void answer_of(wfpr_broker *b, const client *c, const wfpr__entry *e, wire_reply *rp, uint8_t *out)
{
	memcpy(out, e->record, e->record_len);
	memcpy(out + e->record_len, e->context, e->context_len);
	memcpy(rp->token, e->token, WFPR_TOKEN_SIZE);
	rp->action = (uint32_t)e->record_len;
	rp->blob_len = (uint32_t)(e->record_len + e->context_len);
	decide_onward(b, c, e, rp);
}

static int query(wfpr_broker *b, client *c, const wire_request *rq, wire_reply *rp, uint8_t *out, bool may_wait)
{
	struct sockaddr_storage local = rq->a;
	addr_unmap(&local);
	/* only the proxy whose listener accepted the connection may read its
	 * record: not the inspected program, nor another proxy */
	if (!proxy_of(b, c, &local))
		return WFPR_FWP_E_NOT_FOUND;
	wfpr__entry *e = entry_of(b, rq);
	if (!e && may_wait && rq->protocol == IPPROTO_TCP) {
		bool deciding = deciding_toward(b, &local);
		waiting *w = malloc(sizeof(*w));
		if (!w)
			return WFPR_WSAENOBUFS;
		*w = (waiting){.next = b->waiting, .c = c, .rq = *rq, .deadline = wfpr__now_ns() + WAIT_NS,
		               .until_pass = deciding ? 0 : b->passes + 2};
		b->waiting = w;
		return QUERY_WAITS;
	}
	if (!e || !wfpr__store_alive(b->store, e) || (e->holder && e->holder != c->id))
		return WFPR_FWP_E_NOT_FOUND;
	if (rq->flags & WIRE_QUERY_FIRST_DATAGRAM) {
		if (e->delivered)
			return WFPR_FWP_E_NOT_FOUND;
		e->delivered = true;
	}
	hold(e, c, rq->socket);
	answer_of(b, c, e, rp, out);
	return 0;
}

/* Answer a QUERY now (or park it, when may_wait). False if c must go. */
static bool answer_query(wfpr_broker *b, client *c, const wire_request *rq, bool may_wait)
{
	wire_reply rp;
	uint8_t reply[sizeof(rp) + WIRE_REPLY_BLOB_MAX];
	memset(&rp, 0, sizeof(rp));
	rp.err = query(b, c, rq, &rp, reply + sizeof(rp), may_wait);
	if (rp.err == QUERY_WAITS)
		return true;
	if (rp.err)
		rp.blob_len = 0;
	memcpy(reply, &rp, sizeof(rp));
	size_t len = sizeof(rp) + rp.blob_len;
	return send(c->fd, reply, len, MSG_NOSIGNAL | MSG_DONTWAIT) == (ssize_t)len;
}

/* Answer the parked QUERYs that can be answered: all of them once due
 * (FWP_E_NOT_FOUND if their ISSUE never came), else those of `issued`.
 * True if one was about `issued`. */
static bool answer_waiting(wfpr_broker *b, const wfpr__entry *issued)
{
	int64_t now = wfpr__now_ns();
	bool answered = false;
	for (waiting **p = &b->waiting; *p;) {
		waiting *w = *p;
		bool its = issued && entry_of(b, &w->rq) == issued;
		bool passed = w->until_pass && b->passes >= w->until_pass;
		if (passed && !its && now < w->deadline) {
			struct sockaddr_storage local = w->rq.a;
			addr_unmap(&local);
			w->until_pass = 0;
			passed = !deciding_toward(b, &local); /* else its ISSUE is on its way */
		}
		if (!(now >= w->deadline || its || passed)) {
			p = &w->next;
			continue;
		}
		*p = w->next;
		answered |= its;
		if (!answer_query(b, w->c, &w->rq, false))
			w->c->failed = true;
		free(w);
	}
	return answered;
}

static client *client_by_id(const wfpr_broker *b, uint64_t id)
{
	for (client *c = b->clients; c; c = c->next)
		if (c->id == id)
			return c;
	return NULL;
}

/* Push e, just issued, to the client of the proxy it goes to, if that one
 * takes pushes and has room for one more: its QUERY then needs no round
 * trip. The record is not held until the proxy says so (a HOLD notice): a
 * connection it never accepts leaves nothing behind. */
static void push(wfpr_broker *b, const wfpr__entry *e)
{
	if (!b->page)
		return; /* without a page its proxies ask every time, and take no pushes */
	client *to = NULL;
	for (const proxy *p = b->proxies; p && !to; p = p->next)
		if (p->live && p->push && (addr_listens_on(&p->address, &e->target) || addr_listens_on(&p->address6, &e->target)))
			to = client_by_id(b, p->owner);
	if (!to || to->failed || to->pushed - to->drained >= WIRE_PUSH_WINDOW)
		return;
	wire_reply rp;
	uint8_t msg[sizeof(rp) + WIRE_REPLY_BLOB_MAX];
	memset(&rp, 0, sizeof(rp));
	rp.push = 1;
	rp.to = e->target;
	rp.from = e->client;
	answer_of(b, to, e, &rp, msg + sizeof(rp));
	memcpy(msg, &rp, sizeof(rp));
	size_t len = sizeof(rp) + rp.blob_len;
	if (send(to->fd, msg, len, MSG_NOSIGNAL | MSG_DONTWAIT) == (ssize_t)len)
		to->pushed++;
}

/* A batch of notices, in order; false if it is malformed. */
static bool notices(wfpr_broker *b, client *c, const wire_request *rq, const uint8_t *blob)
{
	if (rq->blob_len % sizeof(wire_notice))
		return false;
	for (size_t off = 0; off < rq->blob_len; off += sizeof(wire_notice)) {
		wire_notice n;
		memcpy(&n, blob + off, sizeof(n));
		if ((n.protocol != IPPROTO_TCP && n.protocol != IPPROTO_UDP) ||
		    (n.kind != WIRE_NOTICE_RELEASE && n.kind != WIRE_NOTICE_HOLD))
			return false;
		wire_request one = {.protocol = n.protocol, .a = n.local, .b = n.peer}; /* no socket: a lookup only */
		wfpr__entry *e = entry_of(b, &one);
		struct sockaddr_storage local = n.local;
		addr_unmap(&local);
		if (e && n.kind == WIRE_NOTICE_RELEASE && e->holder == c->id && e->holder_socket == n.socket)
			wfpr__store_remove(b->store, e);
		else if (e && n.kind == WIRE_NOTICE_HOLD && memcmp(e->token, n.token, WFPR_TOKEN_SIZE) == 0 &&
		         proxy_of(b, c, &local) && wfpr__store_alive(b->store, e) && (!e->holder || e->holder == c->id))
			hold(e, c, n.socket); /* as a QUERY would: only the proxy that accepted it */
	}
	return true;
}

static int name_of(wfpr_broker *b, const wire_request *rq, wire_reply *rp)
{
	for (proxy *p = b->proxies; p; p = p->next)
		if (memcmp(wfpr_redirect_handle_id(p->handle), rq->id, WFPR_REDIRECTOR_ID_SIZE) == 0) {
			strcpy(rp->name, p->name);
			return 0;
		}
	return WFPR_FWP_E_NOT_FOUND;
}

static bool valid_request(const wire_request *rq, size_t n)
{
	if (n < sizeof(*rq) || rq->magic != WIRE_MAGIC || rq->blob_len != n - sizeof(*rq) || rq->blob_len > WIRE_BLOB_MAX)
		return false;
	switch (rq->type) {
	case WIRE_ROUTE:
	case WIRE_ISSUE:
	case WIRE_QUERY:
	case WIRE_NOTICE:
		return rq->protocol == IPPROTO_TCP || rq->protocol == IPPROTO_UDP;
	case WIRE_CHECK:
	case WIRE_REGISTER:
	case WIRE_NAME:
		return true;
	}
	return false;
}

/* One request from c (n bytes in b->msg); false when c must be dropped. */
static bool serve(wfpr_broker *b, client *c, size_t n)
{
	wire_request rq;
	memcpy(&rq, b->msg, n < sizeof(rq) ? n : sizeof(rq));
	const uint8_t *in = b->msg + sizeof(rq);
	wire_reply rp;
	uint8_t reply[sizeof(rp)];
	wfpr__entry *e;
	memset(&rp, 0, sizeof(rp));
	COUNT(b->stats.requests);
	if (!valid_request(&rq, n)) {
		COUNT(b->stats.bad_requests);
		return false; /* not our protocol: hang up */
	}
	if (rq.drained <= c->pushed)
		c->drained = rq.drained;
	int page_fd = -1; /* a REGISTER's reply hands out the page, and a ROUTE's that may be kept */
	switch (rq.type) {
	case WIRE_ROUTE:
		rp.err = route(b, c, &rq, in, &rp);
		if (rq.flags & WIRE_ROUTE_ANNOUNCED)
			return true; /* no reply: the client connects to the target it kept */
		if ((rp.onward & WIRE_ROUTE_KEEP) && !c->has_page)
			page_fd = b->page_fd; /* it keeps the answer while the page's generation holds */
		break;
	case WIRE_ISSUE:
		rp.err = issue(b, c, &rq);
		if (rq.protocol == IPPROTO_TCP)
			return true; /* no reply: the client is connecting; a QUERY waits for this */
		break;
	case WIRE_QUERY:
		if (!notices(b, c, &rq, in)) {
			COUNT(b->stats.bad_requests);
			return false;
		}
		return answer_query(b, c, &rq, true);
	case WIRE_CHECK:
		e = rq.blob_len ? entry_issued(b, in, rq.blob_len) : NULL;
		rp.err = e && own_record(e, c, rq.socket) ? 0 : WFPR_WSAEINVAL;
		if (rp.err)
			wfpr__layer_count_bad_record(b->layer);
		break;
	case WIRE_REGISTER:
		rp.err = register_proxy(b, c, &rq, in, &rp);
		page_fd = rp.err ? -1 : b->page_fd;
		break;
	case WIRE_NOTICE:
		if (notices(b, c, &rq, in))
			return true;
		COUNT(b->stats.bad_requests);
		return false; /* not our protocol: hang up */
	case WIRE_NAME: rp.err = name_of(b, &rq, &rp); break;
	}
	if (rp.err)
		rp.blob_len = 0;
	if (page_fd >= 0)
		c->has_page = true;
	memcpy(reply, &rp, sizeof(rp));
	return wfpr__wire_send(c->fd, reply, sizeof(rp) + rp.blob_len, &page_fd, page_fd >= 0, MSG_DONTWAIT) ==
	       (ssize_t)(sizeof(rp) + rp.blob_len);
}

static void drop_client(wfpr_broker *b, client *c)
{
	for (client **p = &b->clients; *p; p = &(*p)->next)
		if (*p == c) {
			*p = c->next;
			break;
		}
	for (proxy *p = b->proxies; p; p = p->next)
		if (p->live && p->owner == c->id) {
			wfpr_filter_remove(b->layer, p->filter);
			p->live = false;
			proxies_changed(b);
		}
	wfpr__store_drop_if(b->store, held_by, c->id);
	for (waiting **p = &b->waiting; *p;) {
		waiting *w = *p;
		if (w->c == c) {
			*p = w->next;
			free(w);
		} else {
			p = &w->next;
		}
	}
	forget_decision(c);
	credit_return(b, c, c->credit);
	/* out of the epoll set first: a forked child of a process that hosts
	 * the broker may hold the socket open, and then closing the descriptor
	 * would leave it watched, with events naming c after it is freed */
	epoll_ctl(b->epoll_fd, EPOLL_CTL_DEL, c->fd, NULL);
	close(c->fd);
	free(c);
}

static void accept_clients(wfpr_broker *b)
{
	for (;;) {
		int fd = accept4(b->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0)
			return;
		struct ucred cred;
		socklen_t len = sizeof(cred);
		client *c = calloc(1, sizeof(*c));
		if (!c || getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0) {
			free(c);
			close(fd);
			continue;
		}
		*c = (client){.fd = fd, .id = ++b->next_client, .pid = cred.pid, .uid = cred.uid, .next = b->clients};
		int sndbuf = PUSH_SNDBUF;
		setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf)); /* the kernel's cap is still room enough */
		struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
		if (epoll_ctl(b->epoll_fd, EPOLL_CTL_ADD, fd, &ev) < 0) {
			close(fd);
			free(c);
			continue;
		}
		b->clients = c;
		COUNT(b->stats.clients);
	}
}

/* One message from c into b->msg, its descriptors into b->fds; its
 * length, or -1 with errno. */
static ssize_t receive(wfpr_broker *b, client *c)
{
	return wfpr__wire_receive(c->fd, b->msg, sizeof(b->msg), b->fds, &b->n_fds, MSG_TRUNC);
}

static void close_fds(wfpr_broker *b)
{
	for (size_t i = 0; i < b->n_fds && i < WIRE_MAX_FDS; i++)
		close(b->fds[i]);
	b->n_fds = 0;
}

static void client_ready(wfpr_broker *b, client *c)
{
	for (;;) {
		ssize_t n = receive(b, c);
		if (n < 0 && (errno == EAGAIN || errno == EINTR))
			return;
		bool ok = n > 0 && (size_t)n <= sizeof(b->msg) && b->n_fds <= WIRE_MAX_FDS && serve(b, c, (size_t)n);
		close_fds(b); /* the checks are done: the broker keeps no caller's socket */
		if (!ok) {
			c->failed = true; /* dropped after this batch, which may still name it */
			return;
		}
	}
}

int wfpr_broker_new(wfpr_broker **out, const wfpr_broker_options *opts)
{
	if (!out || !opts || !opts->path)
		return WFPR_WSAEFAULT;
	*out = NULL;
	struct sockaddr_un sun = {.sun_family = AF_UNIX};
	if ((opts->version != 1 && opts->version != WFPR_BROKER_OPTIONS_VERSION) ||
	    strlen(opts->path) >= sizeof(sun.sun_path) || !opts->path[0])
		return WFPR_WSAEINVAL;
	const char *key = opts->version >= 2 ? opts->key : NULL;
	uint8_t given[WIRE_KEY_SIZE];
	if (key && !wfpr__key_parse(key, given))
		return WFPR_WSAEINVAL;
	strcpy(sun.sun_path, opts->path);
	wfpr_broker *b = calloc(1, sizeof(*b));
	if (!b)
		return WFPR_WSAENOBUFS;
	b->listen_fd = b->epoll_fd = b->stop_fd = -1;
	page_open(b);
	b->user_quota = opts->version >= 2 && opts->user_quota ? opts->user_quota : USER_QUOTA;
	if (key)
		memcpy(b->key, given, WIRE_KEY_SIZE);
	int rc = key || getrandom(b->key, WIRE_KEY_SIZE, 0) == WIRE_KEY_SIZE ? 0 : WFPR_WSAENOBUFS;
	wfpr__key_format(b->key_hex, b->key);
	if (rc == 0)
		rc = wfpr_layer_new(&b->layer);
	if (rc == 0 && !(b->store = wfpr__store_new(MAX_ENTRIES, entry_alive)))
		rc = WFPR_WSAENOBUFS;
	if (rc == 0)
		wfpr__store_on_remove(b->store, uncount_record, b);
	if (rc == 0 && !(b->path = strdup(opts->path)))
		rc = WFPR_WSAENOBUFS;
	if (rc == 0) {
		b->listen_fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		b->epoll_fd = epoll_create1(EPOLL_CLOEXEC);
		b->stop_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
		unlink(opts->path);
		mode_t old = umask(0177);
		int bound = b->listen_fd >= 0 ? bind(b->listen_fd, (struct sockaddr *)&sun, sizeof(sun)) : -1;
		umask(old);
		struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
		struct epoll_event stop = {.events = EPOLLIN, .data.ptr = b};
		if (b->epoll_fd < 0 || b->stop_fd < 0 || bound < 0 || listen(b->listen_fd, 512) < 0 ||
		    epoll_ctl(b->epoll_fd, EPOLL_CTL_ADD, b->listen_fd, &ev) < 0 ||
		    epoll_ctl(b->epoll_fd, EPOLL_CTL_ADD, b->stop_fd, &stop) < 0)
			rc = wfpr_err_from_errno(errno);
	}
	if (rc != 0) {
		wfpr_broker_free(b);
		return rc;
	}
	*out = b;
	return 0;
}

int wfpr__broker_poll(wfpr_broker *b, int timeout_ms)
{
	struct epoll_event events[64];
	if (b->waiting && (timeout_ms < 0 || timeout_ms > 50))
		timeout_ms = 50; /* wake to answer parked QUERYs that are due */
	for (const waiting *w = b->waiting; w && timeout_ms; w = w->next)
		if (w->until_pass)
			timeout_ms = 0; /* a QUERY waits for whole passes (waiting, above) */
	int n = epoll_wait(b->epoll_fd, events, 64, timeout_ms);
	if (n < 0 && errno == EINTR)
		return 0;
	if (n < 0)
		return wfpr_err_from_errno(errno);
	int rc = 0;
	for (int i = 0; i < n; i++) {
		void *w = events[i].data.ptr;
		if (w == b)
			rc = 1;
		else if (!w)
			accept_clients(b);
		else if (!((client *)w)->failed)
			client_ready(b, w);
	}
	if (n < 64)
		b->passes++; /* every ready socket was served */
	if (b->waiting)
		answer_waiting(b, NULL);
	for (client *c = b->clients, *next; c; c = next) {
		next = c->next;
		if (c->failed)
			drop_client(b, c);
	}
	return rc;
}

int wfpr_broker_run(wfpr_broker *b)
{
	if (!b)
		return WFPR_WSAEFAULT;
	int rc;
	while ((rc = wfpr__broker_poll(b, -1)) == 0)
		;
	return rc == 1 ? 0 : rc;
}

void wfpr_broker_stop(wfpr_broker *b)
{
	uint64_t one = 1;
	if (b && write(b->stop_fd, &one, sizeof(one)) < 0) {
		/* the counter is already non-zero: the loop wakes either way */
	}
}

int wfpr_broker_get_stats(wfpr_broker_stats *out, const wfpr_broker *b)
{
	if (!out || !b)
		return WFPR_WSAEFAULT;
	const uint64_t *from = (const uint64_t *)&b->stats;
	uint64_t *to = (uint64_t *)out;
	for (size_t i = 0; i < sizeof(*out) / sizeof(uint64_t); i++)
		to[i] = __atomic_load_n(&from[i], __ATOMIC_RELAXED);
	out->records_live = wfpr__store_count(b->store);
	return 0;
}

const char *wfpr_broker_key(const wfpr_broker *b)
{
	return b ? b->key_hex : NULL;
}

const wfpr_layer *wfpr_broker_layer(const wfpr_broker *b)
{
	return b ? b->layer : NULL;
}

void wfpr_broker_free(wfpr_broker *b)
{
	if (!b)
		return;
	while (b->clients)
		drop_client(b, b->clients);
	wfpr__store_free(b->store);
	free(b->users);
	for (proxy *p = b->proxies, *next; p; p = next) {
		next = p->next;
		free(p);
	}
	if (b->listen_fd >= 0) {
		close(b->listen_fd);
		unlink(b->path);
	}
	if (b->epoll_fd >= 0)
		close(b->epoll_fd);
	if (b->stop_fd >= 0)
		close(b->stop_fd);
	if (b->page)
		munmap(b->page, sizeof(wire_page));
	if (b->page_fd >= 0)
		close(b->page_fd);
	wfpr_layer_free(b->layer);
	free(b->path);
	free(b);
}
