#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>
#include "support.h"

int test_failures;

static void loopback(struct sockaddr_storage *addr)
{
	struct sockaddr_in *sin = (struct sockaddr_in *)addr;
	memset(addr, 0, sizeof(*addr));
	sin->sin_family = AF_INET;
	sin->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
}

uint16_t addr_port(const struct sockaddr_storage *addr)
{
	return ntohs(((const struct sockaddr_in *)addr)->sin_port);
}

socklen_t addr_size(const struct sockaddr_storage *addr)
{
	return addr->ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
}

static int bound(int type, struct sockaddr_storage *addr)
{
	int fd = socket(AF_INET, type | SOCK_CLOEXEC, 0);
	socklen_t len = sizeof(*addr);
	loopback(addr);
	if (fd < 0 || bind(fd, (struct sockaddr *)addr, sizeof(struct sockaddr_in)) < 0 ||
	    getsockname(fd, (struct sockaddr *)addr, &len) < 0 || (type == SOCK_STREAM && listen(fd, 512) < 0)) {
		if (fd >= 0)
			close(fd);
		return -1;
	}
	return fd;
}

void sha256(uint8_t out[32], const void *data, size_t len)
{
	EVP_Digest(data, len, out, NULL, EVP_sha256(), NULL);
}

int tcp_listen(struct sockaddr_storage *addr) { return bound(SOCK_STREAM, addr); }
int udp_bind(struct sockaddr_storage *addr) { return bound(SOCK_DGRAM, addr); }

static bool write_all(int fd, const uint8_t *p, size_t n)
{
	while (n > 0) {
		ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return false;
		p += w;
		n -= (size_t)w;
	}
	return true;
}

void relay(int a, int b)
{
	uint8_t buf[65536];
	const int fds[2] = {a, b};
	struct pollfd p[2] = {{.fd = a, .events = POLLIN}, {.fd = b, .events = POLLIN}};
	int open_ends = 2;

	while (open_ends > 0 && poll(p, 2, 30000) > 0) {
		for (int i = 0; i < 2; i++) {
			if (!(p[i].revents & (POLLIN | POLLHUP | POLLERR)))
				continue;
			ssize_t n = read(p[i].fd, buf, sizeof(buf));
			if (n > 0 && write_all(fds[1 - i], buf, (size_t)n))
				continue;
			if (n < 0)
				return; /* a reset: the caller closes both */
			shutdown(fds[1 - i], SHUT_WR);
			p[i].fd = -1;
			open_ends--;
		}
	}
}

static void *echo_main(void *arg)
{
	echo_server *s = arg;
	for (int i = 0; i < s->expected; i++) {
		int fd = accept(s->listen_fd, NULL, NULL);
		if (fd < 0)
			break;
		EVP_MD_CTX *h = EVP_MD_CTX_new();
		EVP_DigestInit_ex(h, EVP_sha256(), NULL);
		uint8_t buf[65536];
		ssize_t n;
		while ((n = read(fd, buf, sizeof(buf))) > 0) {
			EVP_DigestUpdate(h, buf, (size_t)n);
			if (!write_all(fd, buf, (size_t)n))
				break;
		}
		pthread_mutex_lock(&s->lock);
		EVP_DigestFinal_ex(h, s->digest[s->served++ % 64], NULL);
		EVP_MD_CTX_free(h);
		pthread_mutex_unlock(&s->lock);
		close(fd);
	}
	return NULL;
}

int echo_server_start(echo_server *s, int connections)
{
	memset(s, 0, sizeof(*s));
	pthread_mutex_init(&s->lock, NULL);
	s->expected = connections;
	s->listen_fd = tcp_listen(&s->addr);
	if (s->listen_fd < 0)
		return -1;
	return pthread_create(&s->thread, NULL, echo_main, s) == 0 ? 0 : -1;
}

void echo_server_join(echo_server *s)
{
	pthread_join(s->thread, NULL);
	close(s->listen_fd);
	pthread_mutex_destroy(&s->lock);
}

typedef struct sender {
	int fd;
	const uint8_t *data;
	size_t len;
} sender;

static void *send_main(void *arg)
{
	sender *s = arg;
	write_all(s->fd, s->data, s->len);
	shutdown(s->fd, SHUT_WR);
	return NULL;
}

int echo_client(const struct sockaddr_storage *addr, size_t len, uint8_t sent[32], uint8_t echoed[32])
{
	int fd = wfpr_socket(AF_INET, SOCK_STREAM, 0, 0);
	if (fd < 0 || wfpr_connect(fd, (const struct sockaddr *)addr, addr_size(addr)) < 0) {
		if (fd >= 0)
			wfpr_closesocket(fd);
		return -1;
	}
	uint8_t *data = malloc(len ? len : 1);
	RAND_bytes(data, (int)len);
	sha256(sent, data, len);

	sender s = {fd, data, len};
	pthread_t t;
	pthread_create(&t, NULL, send_main, &s);
	EVP_MD_CTX *h = EVP_MD_CTX_new();
	EVP_DigestInit_ex(h, EVP_sha256(), NULL);
	uint8_t buf[65536];
	ssize_t n;
	size_t got = 0;
	while ((n = read(fd, buf, sizeof(buf))) > 0) {
		EVP_DigestUpdate(h, buf, (size_t)n);
		got += (size_t)n;
	}
	EVP_DigestFinal_ex(h, echoed, NULL);
	EVP_MD_CTX_free(h);
	pthread_join(t, NULL);
	free(data);
	wfpr_closesocket(fd);
	if (got != len)
		fprintf(stderr, "echo_client: %zu of %zu bytes came back (%s)\n", got, len, n < 0 ? strerror(errno) : "eof");
	return got == len ? 0 : -1;
}

static wfpr_action classify(void *user, wfpr_connect_request *req)
{
	redirector *r = user;
	if (!r->greedy && req->state != WFPR_CONNECTION_NOT_REDIRECTED &&
	    req->state != WFPR_CONNECTION_REDIRECTED_BY_OTHER)
		return WFPR_ACTION_PERMIT;
	req->redirect_to = r->addr;
	req->target_pid = getpid();
	return WFPR_ACTION_REDIRECT;
}

static void note_hops(redirector *r, const uint8_t *record, size_t len, const uint8_t *context, size_t context_len)
{
	wfpr_records *records = NULL;
	pthread_mutex_lock(&r->lock);
	if (wfpr_records_decode(&records, record, len) == 0) {
		r->hops_seen[r->connections % 64] = records->hop_count;
		const wfpr_hop *last = &records->hops[records->hop_count - 1];
		if (context_len == 2 * sizeof(struct sockaddr_storage) &&
		    memcmp(context, &last->original_remote, sizeof(struct sockaddr_in)) == 0 &&
		    memcmp(wfpr_redirect_handle_id(r->handle), last->redirector_id, WFPR_REDIRECTOR_ID_SIZE) == 0)
			r->context_matches++;
	} else {
		r->errors++;
	}
	r->connections++;
	pthread_mutex_unlock(&r->lock);
	wfpr_records_free(records);
}

/* QUERY with the size probe, as a redirect service does. NULL on failure. */
static uint8_t *query_blob(int fd, uint32_t code, uint32_t *len)
{
	uint32_t need = 0;
	if (wfpr_ioctl(fd, code, NULL, 0, NULL, 0, &need, NULL, NULL) == 0 ||
	    wfpr_get_last_error() != WFPR_ERROR_INSUFFICIENT_BUFFER || need == 0)
		return NULL;
	uint8_t *buf = malloc(need);
	if (wfpr_ioctl(fd, code, NULL, 0, buf, need, len, NULL, NULL) != 0 || *len != need) {
		free(buf);
		return NULL;
	}
	return buf;
}

typedef struct tcp_job {
	redirector *r;
	int fd;
} tcp_job;

static void finish_job(redirector *r, bool failed)
{
	pthread_mutex_lock(&r->lock);
	if (failed)
		r->errors++;
	if (--r->active == 0)
		pthread_cond_broadcast(&r->idle);
	pthread_mutex_unlock(&r->lock);
}

static void *tcp_conn_main(void *arg)
{
	tcp_job job = *(tcp_job *)arg;
	free(arg);
	uint32_t record_len = 0, context_len = 0;
	uint8_t *record = query_blob(job.fd, WFPR_SIO_QUERY_WFP_CONNECTION_REDIRECT_RECORDS, &record_len);
	uint8_t *context = query_blob(job.fd, WFPR_SIO_QUERY_WFP_CONNECTION_REDIRECT_CONTEXT, &context_len);
	bool failed = true;
	int out = -1;
	if (record && context) {
		note_hops(job.r, record, record_len, context, context_len);
		struct sockaddr_storage dest;
		memcpy(&dest, context, sizeof(dest));
		uint32_t b;
		out = wfpr_socket(dest.ss_family, SOCK_STREAM, 0, 0);
		if (out >= 0 &&
		    wfpr_ioctl(out, WFPR_SIO_SET_WFP_CONNECTION_REDIRECT_RECORDS, record, record_len, NULL, 0, &b, NULL, NULL) == 0 &&
		    wfpr_connect(out, (struct sockaddr *)&dest, addr_size(&dest)) == 0) {
			relay(job.fd, out);
			failed = false;
		}
	}
	if (out >= 0)
		wfpr_closesocket(out);
	wfpr_closesocket(job.fd);
	free(record);
	free(context);
	finish_job(job.r, failed);
	return NULL;
}

static void *tcp_accept_main(void *arg)
{
	redirector *r = arg;
	struct pollfd p = {.fd = r->listen_fd, .events = POLLIN};
	while (!__atomic_load_n(&r->stop, __ATOMIC_ACQUIRE)) {
		if (poll(&p, 1, 20) <= 0)
			continue;
		int fd = wfpr_accept(r->listen_fd, NULL, NULL);
		if (fd < 0)
			continue;
		tcp_job *job = malloc(sizeof(*job));
		*job = (tcp_job){r, fd};
		pthread_mutex_lock(&r->lock);
		r->active++;
		pthread_mutex_unlock(&r->lock);
		pthread_t t;
		pthread_create(&t, NULL, tcp_conn_main, job);
		pthread_detach(t);
	}
	return NULL;
}

typedef struct udp_flow {
	struct sockaddr_storage client, dest;
	int out;
} udp_flow;

/* One thread: datagrams from clients go out per flow, replies come back. */
static void *udp_main(void *arg)
{
	redirector *r = arg;
	udp_flow flows[16];
	int n_flows = 0;
	uint8_t data[65536], control[WFPR_RECORD_MAX_SIZE + 2 * WFPR_CONTEXT_MAX_SIZE];

	while (!__atomic_load_n(&r->stop, __ATOMIC_ACQUIRE)) {
		struct pollfd p[17] = {{.fd = r->listen_fd, .events = POLLIN}};
		for (int i = 0; i < n_flows; i++)
			p[i + 1] = (struct pollfd){.fd = flows[i].out, .events = POLLIN};
		if (poll(p, (nfds_t)n_flows + 1, 20) <= 0)
			continue;
		if (p[0].revents & POLLIN) {
			struct sockaddr_storage from;
			struct iovec iov = {data, sizeof(data)};
			struct msghdr msg = {.msg_name = &from, .msg_namelen = sizeof(from), .msg_iov = &iov,
			                     .msg_iovlen = 1, .msg_control = control, .msg_controllen = sizeof(control)};
			ssize_t n = wfpr_recvmsg(r->listen_fd, &msg, 0);
			if (n < 0)
				continue;
			struct cmsghdr *records = NULL, *context = NULL;
			for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
				if (c->cmsg_level == IPPROTO_IP && c->cmsg_type == WFPR_IP_WFP_REDIRECT_RECORDS)
					records = c;
				if (c->cmsg_level == IPPROTO_IP && c->cmsg_type == WFPR_IP_WFP_REDIRECT_CONTEXT)
					context = c;
			}
			udp_flow *f = NULL;
			for (int i = 0; i < n_flows; i++)
				if (memcmp(&flows[i].client, &from, sizeof(struct sockaddr_in)) == 0)
					f = &flows[i];
			if (!f && records && context && n_flows < 16) {
				size_t rlen = records->cmsg_len - CMSG_LEN(0), clen = context->cmsg_len - CMSG_LEN(0);
				note_hops(r, CMSG_DATA(records), rlen, CMSG_DATA(context), clen);
				f = &flows[n_flows++];
				f->client = from;
				memcpy(&f->dest, CMSG_DATA(context), sizeof(f->dest));
				f->out = wfpr_socket(AF_INET, SOCK_DGRAM, 0, 0);
				/* The first datagram carries the records on to the next hop. */
				uint8_t fwd[CMSG_SPACE(WFPR_RECORD_MAX_SIZE)];
				struct msghdr out = {.msg_name = &f->dest, .msg_namelen = addr_size(&f->dest), .msg_iov = &iov,
				                     .msg_iovlen = 1, .msg_control = fwd, .msg_controllen = CMSG_SPACE(rlen)};
				iov.iov_len = (size_t)n;
				struct cmsghdr *c = CMSG_FIRSTHDR(&out);
				c->cmsg_level = IPPROTO_IP;
				c->cmsg_type = WFPR_IP_WFP_REDIRECT_RECORDS;
				c->cmsg_len = CMSG_LEN(rlen);
				memcpy(CMSG_DATA(c), CMSG_DATA(records), rlen);
				if (wfpr_sendmsg(f->out, &out, 0) < 0)
					r->errors++;
			} else if (f) {
				wfpr_sendto(f->out, data, (size_t)n, 0, (struct sockaddr *)&f->dest, addr_size(&f->dest));
			} else {
				r->errors++;
			}
		}
		for (int i = 0; i < n_flows; i++) {
			if (!(p[i + 1].revents & POLLIN))
				continue;
			ssize_t n = wfpr_recvfrom(flows[i].out, data, sizeof(data), 0, NULL, NULL);
			if (n >= 0)
				sendto(r->listen_fd, data, (size_t)n, 0, (struct sockaddr *)&flows[i].client,
				       addr_size(&flows[i].client));
		}
	}
	for (int i = 0; i < n_flows; i++)
		wfpr_closesocket(flows[i].out);
	return NULL;
}

int redirector_start(redirector *r, wfpr_layer *layer, const char *name, int protocol, uint16_t server_port,
                     uint64_t weight, bool greedy)
{
	memset(r, 0, sizeof(*r));
	r->name = name;
	r->protocol = protocol;
	r->greedy = greedy;
	pthread_mutex_init(&r->lock, NULL);
	pthread_cond_init(&r->idle, NULL);
	r->listen_fd = protocol == IPPROTO_TCP ? tcp_listen(&r->addr) : udp_bind(&r->addr);
	if (r->listen_fd < 0 || wfpr_redirect_handle_create(&r->handle, layer, NULL, name) != 0)
		return -1;
	if (protocol == IPPROTO_UDP) {
		int one = 1;
		if (wfpr_setsockopt(r->listen_fd, IPPROTO_IP, WFPR_IP_WFP_REDIRECT_CONTEXT, &one, sizeof(one)) != 0)
			return -1;
	}
	wfpr_callout_options co = WFPR_CALLOUT_OPTIONS_INIT;
	co.name = name;
	co.classify = classify;
	co.user = r;
	co.handle = r->handle;
	uint32_t callout_id;
	uint64_t filter_id;
	if (wfpr_callout_register(&callout_id, layer, &co) != 0)
		return -1;
	wfpr_filter_options fo = WFPR_FILTER_OPTIONS_INIT;
	fo.name = name;
	fo.callout_id = callout_id;
	fo.weight = weight;
	fo.protocol = protocol;
	fo.remote_port_min = fo.remote_port_max = server_port;
	if (wfpr_filter_add(&filter_id, layer, &fo) != 0)
		return -1;
	return pthread_create(&r->thread, NULL, protocol == IPPROTO_TCP ? tcp_accept_main : udp_main, r) == 0 ? 0 : -1;
}

void redirector_stop(redirector *r)
{
	__atomic_store_n(&r->stop, 1, __ATOMIC_RELEASE);
	pthread_join(r->thread, NULL);
	pthread_mutex_lock(&r->lock);
	while (r->active > 0)
		pthread_cond_wait(&r->idle, &r->lock);
	pthread_mutex_unlock(&r->lock);
	close(r->listen_fd);
	pthread_mutex_destroy(&r->lock);
	pthread_cond_destroy(&r->idle);
}

static void *udp_echo_main(void *arg)
{
	udp_echo *u = arg;
	uint8_t buf[65536];
	struct pollfd p = {.fd = u->fd, .events = POLLIN};
	while (!__atomic_load_n(&u->stop, __ATOMIC_ACQUIRE)) {
		if (poll(&p, 1, 20) <= 0)
			continue;
		struct sockaddr_storage from;
		socklen_t len = sizeof(from);
		ssize_t n = recvfrom(u->fd, buf, sizeof(buf), 0, (struct sockaddr *)&from, &len);
		if (n >= 0) {
			u->datagrams++;
			sendto(u->fd, buf, (size_t)n, 0, (struct sockaddr *)&from, len);
		}
	}
	return NULL;
}

int udp_echo_start(udp_echo *u)
{
	memset(u, 0, sizeof(*u));
	u->fd = udp_bind(&u->addr);
	return u->fd >= 0 && pthread_create(&u->thread, NULL, udp_echo_main, u) == 0 ? 0 : -1;
}

void udp_echo_stop(udp_echo *u)
{
	__atomic_store_n(&u->stop, 1, __ATOMIC_RELEASE);
	pthread_join(u->thread, NULL);
	close(u->fd);
}

struct sockaddr_storage loopback_port(uint16_t port)
{
	struct sockaddr_storage a;
	loopback(&a);
	((struct sockaddr_in *)&a)->sin_port = htons(port);
	return a;
}

static wfpr_action manual_classify(void *user, wfpr_connect_request *req)
{
	manual_redirector *m = user;
	m->calls++;
	m->last_state = req->state;
	m->last_hop_count = req->hop_count;
	if (req->state != WFPR_CONNECTION_NOT_REDIRECTED && req->state != WFPR_CONNECTION_REDIRECTED_BY_OTHER)
		return WFPR_ACTION_PERMIT;
	req->redirect_to = m->addr;
	return WFPR_ACTION_REDIRECT;
}

int manual_redirector_init(manual_redirector *m, wfpr_layer *layer, const char *name, int protocol,
                           uint16_t port, uint64_t weight)
{
	memset(m, 0, sizeof(*m));
	m->listen_fd = protocol == IPPROTO_TCP ? tcp_listen(&m->addr) : udp_bind(&m->addr);
	if (m->listen_fd < 0 || wfpr_redirect_handle_create(&m->handle, layer, NULL, name) != 0)
		return -1;
	wfpr_callout_options co = WFPR_CALLOUT_OPTIONS_INIT;
	co.name = name;
	co.classify = manual_classify;
	co.user = m;
	co.handle = m->handle;
	uint32_t callout_id;
	uint64_t filter_id;
	wfpr_filter_options fo = WFPR_FILTER_OPTIONS_INIT;
	fo.protocol = protocol;
	fo.weight = weight;
	fo.remote_port_min = fo.remote_port_max = port;
	if (wfpr_callout_register(&callout_id, layer, &co) != 0)
		return -1;
	fo.callout_id = callout_id;
	return wfpr_filter_add(&filter_id, layer, &fo);
}

static void *broker_main(void *arg)
{
	wfpr_broker_run(arg);
	return NULL;
}

int broker_thread_start(wfpr_broker **out, pthread_t *thread, const char *path, size_t user_quota)
{
	wfpr_broker_options o = WFPR_BROKER_OPTIONS_INIT;
	o.path = path;
	o.user_quota = user_quota;
	int rc = wfpr_broker_new(out, &o);
	if (rc == 0)
		rc = wfpr_preload_set_key(wfpr_broker_key(*out)); /* this process's proxies present it */
	if (rc == 0 && pthread_create(thread, NULL, broker_main, *out) != 0) {
		wfpr_broker_free(*out);
		rc = WFPR_WSAENOBUFS;
	}
	return rc;
}

void broker_thread_stop(wfpr_broker *broker, pthread_t thread)
{
	wfpr_broker_stop(broker);
	pthread_join(thread, NULL);
	wfpr_broker_free(broker);
}
