/* The service engine over real loopback TCP: two engines as cooperating
 * proxies, Lua verdicts (pass, inspect with EICAR, block), a refusing
 * server, many connections at once, and the JSON-lines log. */
#include <errno.h>
#include <fcntl.h>
#include <linux/tcp.h> /* struct tcp_info with tcpi_segs_in */
#include <netinet/in.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/time.h>
#include <unistd.h>
#include "../../core/engine/addrmap.h"
#include "support.h"
#include "test.h"
#include "wfpr/engine.h"

typedef struct proxy {
	wfpr_layer *layer;
	uint64_t filter_id;
	wfpr_engine *engine;
	wfpr_rules *rules;
	wfpr_redirect_handle *handle;
	struct sockaddr_storage addr;
	pthread_t thread;
} proxy;

static wfpr_action send_to_proxy(void *user, wfpr_connect_request *req)
{
	proxy *p = user;
	if (req->state == WFPR_CONNECTION_REDIRECTED_BY_SELF || req->state == WFPR_CONNECTION_PREVIOUSLY_REDIRECTED_BY_SELF)
		return WFPR_ACTION_PERMIT;
	req->redirect_to = p->addr;
	return WFPR_ACTION_REDIRECT;
}

static void *run(void *arg)
{
	wfpr_engine_run(((proxy *)arg)->engine);
	return NULL;
}

/* proxy_start_with's hooks to set the proxy up without running it */
static const wfpr_engine_hooks NOT_YET;

static void proxy_start_with(proxy *p, wfpr_layer *layer, const char *name, uint16_t port, uint64_t weight,
                             const char *rule_file, int log_fd, int protocol, unsigned int udp_idle_ms,
                             const wfpr_engine_hooks *hooks)
{
	memset(p, 0, sizeof(*p));
	CHECK_EQ(wfpr_redirect_handle_create(&p->handle, layer, NULL, name), 0);
	if (rule_file) {
		char path[512];
		snprintf(path, sizeof(path), "%s%s%s", rule_file[0] == '/' ? "" : WFPR_RULES_DIR,
		         rule_file[0] == '/' ? "" : "/", rule_file); /* an absolute path: a rule of the test's own */
		CHECK_EQ(wfpr_rules_new(&p->rules, NULL), 0);
		CHECK_EQ(wfpr_rules_load_file(p->rules, path), 0);
	}
	wfpr_engine_options o = WFPR_ENGINE_OPTIONS_INIT;
	o.name = name;
	o.handle = p->handle;
	o.rules = p->rules;
	o.log_fd = log_fd;
	o.udp = protocol == IPPROTO_UDP;
	o.udp_idle_ms = udp_idle_ms;
	o.hooks = hooks == &NOT_YET ? NULL : hooks;
	CHECK_EQ(wfpr_engine_new(&p->engine, &o), 0);
	CHECK_EQ(wfpr_engine_address(&p->addr, p->engine), 0);
	wfpr_callout_options co = WFPR_CALLOUT_OPTIONS_INIT;
	co.classify = send_to_proxy;
	co.user = p;
	co.handle = p->handle;
	uint32_t cid;
	p->layer = layer;
	CHECK_EQ(wfpr_callout_register(&cid, layer, &co), 0);
	wfpr_filter_options fo = WFPR_FILTER_OPTIONS_INIT;
	fo.callout_id = cid;
	fo.protocol = protocol;
	fo.weight = weight;
	fo.remote_port_min = fo.remote_port_max = port;
	CHECK_EQ(wfpr_filter_add(&p->filter_id, layer, &fo), 0);
	if (!hooks || hooks != &NOT_YET)
		pthread_create(&p->thread, NULL, run, p);
}

static void proxy_start(proxy *p, wfpr_layer *layer, const char *name, uint16_t port, uint64_t weight,
                        const char *rule_file, int log_fd)
{
	proxy_start_with(p, layer, name, port, weight, rule_file, log_fd, IPPROTO_TCP, 0, NULL);
}

static wfpr_engine_stats proxy_stop(proxy *p)
{
	wfpr_engine_stats st;
	wfpr_filter_remove(p->layer, p->filter_id); /* no more redirects to a stopped proxy */
	wfpr_engine_stop(p->engine);
	pthread_join(p->thread, NULL);
	wfpr_engine_get_stats(&st, p->engine);
	wfpr_engine_free(p->engine);
	wfpr_rules_free(p->rules);
	return st;
}

/* Log lines containing needle and, when hops >= 0, listing that many hops. */
static size_t count_lines(int fd, const char *needle, int hops)
{
	char buf[1 << 16];
	lseek(fd, 0, SEEK_SET);
	ssize_t n = read(fd, buf, sizeof(buf) - 1);
	buf[n > 0 ? n : 0] = '\0';
	size_t count = 0;
	for (char *line = strtok(buf, "\n"); line; line = strtok(NULL, "\n")) {
		const char *h = strstr(line, "\"hops\":[");
		if (!strstr(line, needle) || !h)
			continue;
		int listed = h[8] == ']' ? 0 : 1;
		for (const char *p = h + 8; *p && *p != ']'; p++)
			listed += *p == ',';
		count += hops < 0 || listed == hops;
	}
	return count;
}

/* Every connect line has exactly one close or error line with its id, and
 * no id opens two connections: ids are unique in the process. */
static bool connects_pair_up(int fd)
{
	static char buf[1 << 16];
	lseek(fd, 0, SEEK_SET);
	ssize_t n = read(fd, buf, sizeof(buf) - 1);
	buf[n > 0 ? n : 0] = '\0';
	unsigned long long opened[256];
	int opens[256] = {0}, ends[256] = {0};
	size_t n_ids = 0;
	for (char *line = strtok(buf, "\n"); line; line = strtok(NULL, "\n")) {
		const char *ev = strstr(line, "\"event\":\""), *id = strstr(line, "\"id\":");
		if (!ev || !id)
			return false;
		unsigned long long v = strtoull(id + 5, NULL, 10);
		size_t i = 0;
		while (i < n_ids && opened[i] != v)
			i++;
		if (i == n_ids) {
			if (n_ids == 256)
				return false;
			opened[n_ids++] = v;
		}
		ev += 9;
		if (strncmp(ev, "connect\"", 8) == 0)
			opens[i]++;
		else if (strncmp(ev, "close\"", 6) == 0 || strncmp(ev, "error\"", 6) == 0)
			ends[i]++;
	}
	for (size_t i = 0; i < n_ids; i++)
		if (opens[i] != 1 || ends[i] != 1)
			return false;
	return n_ids > 0;
}

/* An anonymous file that several engines append their JSON lines to. */
static int shared_log(void)
{
	int fd = memfd_create("wfpr-engine-log", MFD_CLOEXEC);
	CHECK(fd >= 0 && fcntl(fd, F_SETFL, O_APPEND) == 0);
	return fd;
}

static void two_engines_cooperate(void)
{
	wfpr_layer *layer;
	echo_server server;
	proxy av, dlp;
	int log_fd = shared_log();
	CHECK_EQ(wfpr_layer_new(&layer), 0);
	CHECK_EQ(echo_server_start(&server, 3), 0);
	proxy_start(&av, layer, "av", addr_port(&server.addr), 10, NULL, log_fd);
	proxy_start(&dlp, layer, "dlp", addr_port(&server.addr), 5, "tag.lua", log_fd);
	CHECK_EQ(wfpr_inproc_attach(layer), 0);
	uint8_t sent[3][32], echoed[32];
	size_t sizes[3] = {0, 1, 8u << 20};
	for (int i = 0; i < 3; i++) {
		CHECK_EQ(echo_client(&server.addr, sizes[i], sent[i], echoed), 0);
		CHECK(memcmp(sent[i], echoed, 32) == 0);
	}
	echo_server_join(&server);
	for (int i = 0; i < 3; i++)
		CHECK(memcmp(server.digest[i], sent[i], 32) == 0);
	wfpr_engine_stats a = proxy_stop(&av), d = proxy_stop(&dlp);
	CHECK_EQ(a.accepted, 3);
	CHECK_EQ(d.accepted, 3);
	CHECK_EQ(a.passed, 3);
	CHECK_EQ(d.inspected, 3); /* tag.lua inspects */
	CHECK_EQ(a.failed + d.failed, 0);
	CHECK_EQ(a.bytes_up, sizes[0] + sizes[1] + sizes[2]);
	CHECK_EQ(d.bytes_down, sizes[0] + sizes[1] + sizes[2]);
	/* one connect and one close line per connection and proxy; the dlp saw two hops */
	CHECK_EQ(count_lines(log_fd, "\"proxy\":\"av\",\"event\":\"connect\"", 1), 3);
	CHECK_EQ(count_lines(log_fd, "\"proxy\":\"av\",\"event\":\"close\"", 1), 3);
	CHECK_EQ(count_lines(log_fd, "\"proxy\":\"dlp\",\"event\":\"connect\"", 2), 3);
	CHECK_EQ(count_lines(log_fd, "\"proxy\":\"dlp\",\"event\":\"close\"", 2), 3);
	CHECK_EQ(count_lines(log_fd, "\"state\":\"REDIRECTED_BY_SELF\"", -1), 12);
	CHECK_EQ(count_lines(log_fd, "\"bytes_up\":8388608,\"bytes_down\":8388608", -1), 2);
	close(log_fd);
	wfpr_inproc_detach(layer);
	wfpr_layer_free(layer);
}

/* A client that sends data and reports how the connection ended. */
static int send_and_read(const struct sockaddr_storage *addr, const char *data, size_t *got)
{
	int fd = wfpr_socket(AF_INET, SOCK_STREAM, 0, 0);
	if (wfpr_connect(fd, (const struct sockaddr *)addr, addr_size(addr)) != 0) {
		wfpr_closesocket(fd);
		return -1;
	}
	send(fd, data, strlen(data), MSG_NOSIGNAL);
	shutdown(fd, SHUT_WR);
	char buf[4096];
	ssize_t n;
	*got = 0;
	while ((n = read(fd, buf, sizeof(buf))) > 0)
		*got += (size_t)n;
	int err = n < 0 ? errno : 0;
	wfpr_closesocket(fd);
	return err;
}

static void rules_decide(void)
{
	wfpr_layer *layer;
	echo_server server;
	proxy av, allow;
	CHECK_EQ(wfpr_layer_new(&layer), 0);
	CHECK_EQ(echo_server_start(&server, 2), 0); /* the clean and the EICAR connection reach it */
	proxy_start(&av, layer, "av", addr_port(&server.addr), 10, "eicar.lua", -1);
	proxy_start(&allow, layer, "allow", addr_port(&server.addr), 5, "allowlist.lua", -1);
	CHECK_EQ(wfpr_inproc_attach(layer), 0);
	size_t got = 0;
	/* the allowlist blocks this port (not 80 or 443): a reset or EOF, no echo */
	int err = send_and_read(&server.addr, "hello", &got);
	CHECK_EQ(got, 0);
	CHECK(err == 0 || err == ECONNRESET);
	wfpr_engine_stats a = proxy_stop(&allow);
	CHECK_EQ(a.blocked, 1);

	/* without the allowlist: clean data passes, EICAR is cut off before the server */
	CHECK_EQ(send_and_read(&server.addr, "clean data", &got), 0);
	CHECK_EQ(got, 10);
	const char *eicar = "X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";
	err = send_and_read(&server.addr, eicar, &got);
	CHECK_EQ(got, 0);
	CHECK(err == 0 || err == ECONNRESET);
	echo_server_join(&server);
	wfpr_engine_stats s = proxy_stop(&av);
	CHECK_EQ(s.inspected, 3);
	/* the clean data, and "hello" if it left before the next proxy's block reset
	 * the connection (a race); never the EICAR bytes */
	CHECK(s.bytes_up == 10 || s.bytes_up == 5 + 10);
	wfpr_inproc_detach(layer);
	wfpr_layer_free(layer);
}

/* A rule file of the test's own, in /tmp; its path. */
static const char *rule_file(const char *name, const char *text)
{
	static char path[4][128];
	static int next;
	char *p = path[next++ & 3];
	snprintf(p, sizeof(path[0]), "/tmp/wfpr-test-%d-%s.lua", (int)getpid(), name);
	FILE *f = fopen(p, "w");
	if (!f)
		abort();
	fputs(text, f);
	fclose(f);
	return p;
}

/* need_more: the engine holds the bytes until the rule has what it asked
 * for, so a message split over many writes is seen, and changed, whole; a
 * rule that asks for more than the cap gets the default verdict (pass), and
 * every byte still arrives, in order. */
static void need_more_holds_bytes(void)
{
	wfpr_layer *layer;
	echo_server server;
	proxy p;
	CHECK_EQ(wfpr_layer_new(&layer), 0);
	CHECK_EQ(echo_server_start(&server, 2), 0);
	const char *upper = rule_file("upper",
	                              "function on_connect(conn) return inspect end\n"
	                              "function on_data(conn, dir, s)\n"
	                              "  if dir == 'up' and #s < 64 then return need_more(64 - #s) end\n"
	                              "  if dir == 'up' then return s:upper() end\n"
	                              "end\n");
	proxy_start(&p, layer, "upper", addr_port(&server.addr), 1, upper, -1);
	CHECK_EQ(wfpr_inproc_attach(layer), 0);
	int s = wfpr_socket(AF_INET, SOCK_STREAM, 0, 0);
	CHECK_EQ(wfpr_connect(s, (struct sockaddr *)&server.addr, addr_size(&server.addr)), 0);
	const char *text = "abcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwxyzabcdefghijkl"; /* 64 */
	for (int i = 0; i < 8; i++) {
		CHECK_EQ(send(s, text + 8 * i, 8, 0), 8);
		usleep(2000);
	}
	shutdown(s, SHUT_WR);
	char back[65] = "";
	size_t got = 0;
	for (ssize_t n; got < 64 && (n = read(s, back + got, 64 - got)) > 0;)
		got += (size_t)n;
	CHECK_EQ(got, 64);
	CHECK(memcmp(back, "ABCDEFGHIJKLMNOPQRSTUVWXYZABCDEFGHIJKLMNOPQRSTUVWXYZABCDEFGHIJKL", 64) == 0);
	wfpr_closesocket(s);
	proxy_stop(&p);

	/* a rule that always asks for more: past 64 KiB, the default verdict; 1 MiB arrives whole */
	const char *greedy = rule_file("greedy", "function on_connect(conn) return inspect end\n"
	                                         "function on_data(conn, dir, s) return need_more(1) end\n");
	proxy_start(&p, layer, "greedy", addr_port(&server.addr), 1, greedy, -1);
	uint8_t sent[32], echoed[32];
	CHECK_EQ(echo_client(&server.addr, 1u << 20, sent, echoed), 0);
	CHECK(memcmp(sent, echoed, 32) == 0);
	echo_server_join(&server);
	proxy_stop(&p);
	wfpr_inproc_detach(layer);
	wfpr_layer_free(layer);
}

static void refused_destination_resets_the_client(void)
{
	wfpr_layer *layer;
	proxy p;
	struct sockaddr_storage closed_port;
	int probe = tcp_listen(&closed_port);
	close(probe); /* nothing listens there now */
	CHECK_EQ(wfpr_layer_new(&layer), 0);
	proxy_start(&p, layer, "p", addr_port(&closed_port), 1, NULL, -1);
	CHECK_EQ(wfpr_inproc_attach(layer), 0);
	size_t got = 0;
	int err = send_and_read(&closed_port, "x", &got);
	CHECK(err == ECONNRESET || err == 0);
	CHECK_EQ(got, 0);
	wfpr_engine_stats st = proxy_stop(&p);
	/* at least this connection; with suites running in parallel, a stray
	 * connection from another process can land on the engine's port too */
	CHECK(st.failed >= 1);
	wfpr_inproc_detach(layer);
	wfpr_layer_free(layer);
}

/* Connections in the engine's backlog when it comes to a stop are settled
 * first: each is accepted, its rule asked and its connect logged, then
 * closed (as `wfpr run` stops its proxies once its command exits). Asked
 * to stop before they came, the engine sees the stop first. */
static void stop_settles_the_backlog(void)
{
	enum { CLIENTS = 4 };
	wfpr_layer *layer;
	proxy p;
	struct sockaddr_storage server;
	int listener = tcp_listen(&server), log_fd = shared_log();
	CHECK_EQ(wfpr_layer_new(&layer), 0);
	proxy_start_with(&p, layer, "settle", addr_port(&server), 1, NULL, log_fd, IPPROTO_TCP, 0, &NOT_YET);
	CHECK_EQ(wfpr_inproc_attach(layer), 0);
	int clients[CLIENTS];
	wfpr_engine_stop(p.engine); /* before it runs at all */
	for (int i = 0; i < CLIENTS; i++) {
		clients[i] = wfpr_socket(AF_INET, SOCK_STREAM, 0, 0);
		CHECK_EQ(wfpr_connect(clients[i], (struct sockaddr *)&server, addr_size(&server)), 0); /* in its backlog */
	}
	pthread_create(&p.thread, NULL, run, &p);
	wfpr_engine_stats st = proxy_stop(&p);
	CHECK_EQ(st.accepted, CLIENTS);
	CHECK_EQ(st.passed, CLIENTS);
	CHECK_EQ(count_lines(log_fd, "\"event\":\"connect\"", 1), CLIENTS);
	for (int i = 0; i < CLIENTS; i++)
		wfpr_closesocket(clients[i]);
	close(listener);
	close(log_fd);
	wfpr_inproc_detach(layer);
	wfpr_layer_free(layer);
}

/* A server that writes its last bytes and its FIN in one segment, then
 * waits for the client to close. It writes a while after it accepted, once
 * the engine has found nothing to read yet: the segment then comes with an
 * event that tells the engine of both. (The engine reads a socket it has
 * had no event for yet, and a short read there cannot tell whether a FIN
 * is already waiting behind the bytes.) */
static const char LAST_WORDS[] = "the last bytes, and then the end";

static void *last_words_main(void *arg)
{
	int listener = *(int *)arg, one = 1;
	int fd = accept(listener, NULL, NULL);
	usleep(300 * 1000);
	setsockopt(fd, IPPROTO_TCP, TCP_CORK, &one, sizeof(one)); /* the bytes wait for the FIN */
	CHECK_EQ(write(fd, LAST_WORDS, sizeof(LAST_WORDS)), (ssize_t)sizeof(LAST_WORDS));
	shutdown(fd, SHUT_WR);
	char c;
	while (read(fd, &c, 1) > 0)
		;
	close(fd);
	return NULL;
}

static uint32_t segments_in(int fd)
{
	struct tcp_info info;
	socklen_t len = sizeof(info);
	memset(&info, 0, sizeof(info));
	CHECK_EQ(getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &len), 0);
	return info.tcpi_segs_in;
}

/* Bytes that end a stream reach the client with the FIN in their segment,
 * as they came: the client wakes once for both (haproxy does the same;
 * with a new connection per request, one segment and one wake-up fewer
 * per request). */
static void the_last_bytes_carry_the_fin(void)
{
	wfpr_layer *layer;
	proxy p;
	struct sockaddr_storage server;
	int listener = tcp_listen(&server);
	pthread_t t;
	pthread_create(&t, NULL, last_words_main, &listener);
	CHECK_EQ(wfpr_layer_new(&layer), 0);
	proxy_start(&p, layer, "fin", addr_port(&server), 1, NULL, -1);
	CHECK_EQ(wfpr_inproc_attach(layer), 0);
	int client = wfpr_socket(AF_INET, SOCK_STREAM, 0, 0);
	CHECK_EQ(wfpr_connect(client, (struct sockaddr *)&server, addr_size(&server)), 0);
	uint32_t before = segments_in(client); /* the handshake's */
	char got[64];
	size_t n = 0;
	ssize_t r;
	while ((r = read(client, got + n, sizeof(got) - n)) > 0)
		n += (size_t)r;
	CHECK_EQ(r, 0);
	CHECK_EQ(n, sizeof(LAST_WORDS));
	CHECK(memcmp(got, LAST_WORDS, n) == 0);
	CHECK_EQ(segments_in(client) - before, 1); /* the bytes and the FIN together */
	wfpr_closesocket(client);
	pthread_join(t, NULL);
	proxy_stop(&p);
	close(listener);
	wfpr_inproc_detach(layer);
	wfpr_layer_free(layer);
}

typedef struct job {
	const struct sockaddr_storage *addr;
	size_t len;
	uint8_t sent[32], echoed[32];
	int rc;
} job;

static void *client_main(void *arg)
{
	job *j = arg;
	j->rc = echo_client(j->addr, j->len, j->sent, j->echoed);
	return NULL;
}

static void many_connections_at_once(void)
{
	enum { CLIENTS = 64 };
	static job jobs[CLIENTS];
	pthread_t t[CLIENTS];
	wfpr_layer *layer;
	echo_server server;
	proxy a, b;
	CHECK_EQ(wfpr_layer_new(&layer), 0);
	CHECK_EQ(echo_server_start(&server, CLIENTS), 0);
	proxy_start(&a, layer, "a", addr_port(&server.addr), 10, NULL, -1);
	proxy_start(&b, layer, "b", addr_port(&server.addr), 5, NULL, -1);
	CHECK_EQ(wfpr_inproc_attach(layer), 0);
	for (int i = 0; i < CLIENTS; i++) {
		jobs[i] = (job){.addr = &server.addr, .len = 100000 + (size_t)i * 1013};
		pthread_create(&t[i], NULL, client_main, &jobs[i]);
	}
	for (int i = 0; i < CLIENTS; i++) {
		pthread_join(t[i], NULL);
		CHECK_EQ(jobs[i].rc, 0);
		CHECK(memcmp(jobs[i].sent, jobs[i].echoed, 32) == 0);
	}
	echo_server_join(&server);
	wfpr_engine_stats sa = proxy_stop(&a), sb = proxy_stop(&b);
	CHECK_EQ(sa.accepted, CLIENTS);
	CHECK_EQ(sb.accepted, CLIENTS);
	CHECK_EQ(sa.failed + sb.failed, 0);
	wfpr_inproc_detach(layer);
	wfpr_layer_free(layer);
}

typedef struct sink {
	int listen_fd;
	size_t received;
	uint8_t digest[32];
} sink;

static void *sink_main(void *arg)
{
	sink *k = arg;
	int fd = accept(k->listen_fd, NULL, NULL);
	EVP_MD_CTX *h = EVP_MD_CTX_new();
	EVP_DigestInit_ex(h, EVP_sha256(), NULL);
	static uint8_t buf[1 << 16];
	ssize_t n;
	while ((n = read(fd, buf, sizeof(buf))) > 0) {
		EVP_DigestUpdate(h, buf, (size_t)n);
		k->received += (size_t)n;
	}
	EVP_DigestFinal_ex(h, k->digest, NULL);
	EVP_MD_CTX_free(h);
	close(fd);
	return NULL;
}

/* 100 MiB one way through two engines to a sink that never writes back:
 * full buffers drained in one go, with no traffic the other way to wake the
 * loop (the relay once stalled on exactly this). A stall fails the send
 * after 10 s instead of hanging the test. */
static void a_large_one_way_stream(void)
{
	enum { SIZE = 100u << 20, CHUNK = 256u << 10 }; /* the engine's buffer size */
	wfpr_layer *layer;
	proxy a, b;
	sink k = {0};
	struct sockaddr_storage addr;
	k.listen_fd = tcp_listen(&addr);
	pthread_t t;
	pthread_create(&t, NULL, sink_main, &k);
	CHECK_EQ(wfpr_layer_new(&layer), 0);
	proxy_start(&a, layer, "a", addr_port(&addr), 10, NULL, -1);
	proxy_start(&b, layer, "b", addr_port(&addr), 5, NULL, -1);
	CHECK_EQ(wfpr_inproc_attach(layer), 0);

	int fd = wfpr_socket(AF_INET, SOCK_STREAM, 0, 0);
	struct timeval timeout = {10, 0};
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof(timeout));
	CHECK_EQ(wfpr_connect(fd, (struct sockaddr *)&addr, addr_size(&addr)), 0);
	EVP_MD_CTX *h = EVP_MD_CTX_new();
	EVP_DigestInit_ex(h, EVP_sha256(), NULL);
	static uint8_t chunk[CHUNK];
	size_t sent = 0;
	while (sent < SIZE) {
		RAND_bytes(chunk, 64); /* vary the data cheaply */
		ssize_t n = send(fd, chunk, CHUNK, MSG_NOSIGNAL);
		if (n <= 0)
			break;
		EVP_DigestUpdate(h, chunk, (size_t)n);
		sent += (size_t)n;
	}
	CHECK_EQ(sent, SIZE);
	shutdown(fd, SHUT_WR);
	uint8_t digest[32];
	EVP_DigestFinal_ex(h, digest, NULL);
	EVP_MD_CTX_free(h);
	if (sent < SIZE)
		shutdown(fd, SHUT_RDWR); /* a stall: end the stream so the sink thread finishes */
	pthread_join(t, NULL);
	CHECK_EQ(k.received, SIZE);
	CHECK(memcmp(k.digest, digest, 32) == 0);
	wfpr_closesocket(fd);
	wfpr_engine_stats sa = proxy_stop(&a), sb = proxy_stop(&b);
	CHECK_EQ(sa.bytes_up, SIZE);
	CHECK_EQ(sb.bytes_up, SIZE);
	close(k.listen_fd);
	wfpr_inproc_detach(layer);
	wfpr_layer_free(layer);
}

/* UDP through two engines: the records ride the flow's first datagram,
 * replies come back from the original destination, idle flows end. */
static void udp_flows_through_two_engines(void)
{
	wfpr_layer *layer;
	udp_echo server;
	proxy a, b;
	int log_fd = shared_log();
	CHECK_EQ(wfpr_layer_new(&layer), 0);
	CHECK_EQ(udp_echo_start(&server), 0);
	proxy_start_with(&a, layer, "dns-a", addr_port(&server.addr), 10, NULL, log_fd, IPPROTO_UDP, 150, NULL);
	proxy_start_with(&b, layer, "dns-b", addr_port(&server.addr), 5, NULL, log_fd, IPPROTO_UDP, 150, NULL);
	CHECK_EQ(wfpr_inproc_attach(layer), 0);
	int fd = wfpr_socket(AF_INET, SOCK_DGRAM, 0, 0);
	struct timeval timeout = {5, 0};
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
	enum { DATAGRAMS = 5 };
	for (int i = 0; i < DATAGRAMS; i++) {
		uint8_t out[900], in[2048];
		RAND_bytes(out, sizeof(out));
		CHECK_EQ(wfpr_sendto(fd, out, sizeof(out), 0, (struct sockaddr *)&server.addr, addr_size(&server.addr)), sizeof(out));
		struct sockaddr_storage from;
		socklen_t from_len = sizeof(from);
		ssize_t n = wfpr_recvfrom(fd, in, sizeof(in), 0, (struct sockaddr *)&from, &from_len);
		CHECK_EQ(n, sizeof(out));
		CHECK(n == sizeof(out) && memcmp(in, out, sizeof(out)) == 0);
		CHECK(memcmp(&from, &server.addr, sizeof(struct sockaddr_in)) == 0); /* not a proxy's address */
	}
	usleep(600 * 1000); /* past the idle timeout: both flows end */
	wfpr_closesocket(fd);
	wfpr_engine_stats sa = proxy_stop(&a), sb = proxy_stop(&b);
	udp_echo_stop(&server);
	CHECK_EQ(server.datagrams, DATAGRAMS);
	CHECK_EQ(sa.flows, 1);
	CHECK_EQ(sb.flows, 1);
	CHECK_EQ(sa.datagrams_up, DATAGRAMS);
	CHECK_EQ(sb.datagrams_down, DATAGRAMS);
	CHECK_EQ(sa.flows_expired, 1);
	CHECK_EQ(sb.flows_expired, 1);
	CHECK_EQ(sa.failed + sb.failed, 0);
	CHECK_EQ(count_lines(log_fd, "\"proxy\":\"dns-a\",\"event\":\"connect\"", 1), 1);
	CHECK_EQ(count_lines(log_fd, "\"proxy\":\"dns-b\",\"event\":\"connect\"", 2), 1);
	CHECK_EQ(count_lines(log_fd, "\"event\":\"close\"", -1), 2);
	CHECK_EQ(count_lines(log_fd, "\"proto\":\"udp\"", -1), 4);
	CHECK(connects_pair_up(log_fd)); /* the two engines' flows have ids of their own */
	close(log_fd);
	wfpr_inproc_detach(layer);
	wfpr_layer_free(layer);
}

/* Hooks in C: inspect everything, upper-case what goes up, count the closes. */
typedef struct c_hooks_seen {
	int connects, closes;
	uint64_t closed_up;
	uint8_t upper[1 << 20];
} c_hooks_seen;

static wfpr_verdict c_on_connect(void *user, const wfpr_rule_conn *conn)
{
	c_hooks_seen *seen = user;
	seen->connects++;
	return conn->state == WFPR_CONNECTION_REDIRECTED_BY_SELF ? WFPR_VERDICT_INSPECT : WFPR_VERDICT_BLOCK;
}

static wfpr_data_verdict c_on_data(void *user, const wfpr_rule_conn *conn, int direction, const void *data, size_t len,
                                   const void **out, size_t *out_len)
{
	c_hooks_seen *seen = user;
	(void)conn;
	if (direction != 0)
		return WFPR_DATA_PASS;
	const uint8_t *in = data;
	for (size_t i = 0; i < len && i < sizeof(seen->upper); i++)
		seen->upper[i] = (uint8_t)(in[i] >= 'a' && in[i] <= 'z' ? in[i] - 32 : in[i]);
	*out = seen->upper;
	*out_len = len < sizeof(seen->upper) ? len : sizeof(seen->upper);
	return WFPR_DATA_REPLACE;
}

static void c_on_close(void *user, const wfpr_rule_conn *conn, const wfpr_rule_close_stats *stats)
{
	c_hooks_seen *seen = user;
	(void)conn;
	seen->closes++;
	seen->closed_up += stats->bytes_up;
}

static void c_hooks_decide(void)
{
	static c_hooks_seen seen;
	wfpr_engine_hooks hooks = {c_on_connect, c_on_data, c_on_close, &seen};
	wfpr_layer *layer;
	echo_server server;
	proxy p;
	CHECK_EQ(wfpr_layer_new(&layer), 0);
	CHECK_EQ(echo_server_start(&server, 1), 0);
	proxy_start_with(&p, layer, "c-hooks", addr_port(&server.addr), 10, NULL, -1, IPPROTO_TCP, 0, &hooks);
	CHECK_EQ(wfpr_inproc_attach(layer), 0);
	int fd = wfpr_socket(AF_INET, SOCK_STREAM, 0, 0);
	CHECK_EQ(wfpr_connect(fd, (struct sockaddr *)&server.addr, addr_size(&server.addr)), 0);
	const char hello[] = "hello from c";
	char back[sizeof(hello)] = {0};
	CHECK_EQ(send(fd, hello, sizeof(hello), MSG_NOSIGNAL), (ssize_t)sizeof(hello));
	shutdown(fd, SHUT_WR);
	size_t got = 0;
	ssize_t n;
	while (got < sizeof(back) && (n = read(fd, back + got, sizeof(back) - got)) > 0)
		got += (size_t)n;
	CHECK_EQ(got, sizeof(hello));
	CHECK(strcmp(back, "HELLO FROM C") == 0);
	wfpr_closesocket(fd);
	echo_server_join(&server);
	wfpr_engine_stats st = proxy_stop(&p);
	CHECK_EQ(st.inspected, 1);
	CHECK_EQ(seen.connects, 1);
	CHECK_EQ(seen.closes, 1);
	CHECK_EQ(seen.closed_up, sizeof(hello));
	wfpr_inproc_detach(layer);
	wfpr_layer_free(layer);
}

/* The engine's map from a client's address to its UDP flow: every entry
 * found again through growth, each family and port its own key, removal
 * exact. */
static void address_map_finds_each_flow(void)
{
	wfpr__addrmap m;
	CHECK_EQ(wfpr__addrmap_init(&m), 0);
	enum { N = 5000 };
	static struct sockaddr_storage keys[2 * N];
	for (int i = 0; i < N; i++) {
		struct sockaddr_in *four = (struct sockaddr_in *)&keys[i];
		four->sin_family = AF_INET;
		four->sin_addr.s_addr = htonl(0x7f000001u + (uint32_t)(i / 1000));
		four->sin_port = htons((uint16_t)(10000 + i % 1000));
		struct sockaddr_in6 *six = (struct sockaddr_in6 *)&keys[N + i];
		six->sin6_family = AF_INET6;
		six->sin6_addr = in6addr_loopback;
		six->sin6_addr.s6_addr[0] = (uint8_t)(i / 1000); /* another address, the same ports as the IPv4 ones */
		six->sin6_port = four->sin_port;
	}
	for (int i = 0; i < 2 * N; i++) {
		CHECK(wfpr__addrmap_get(&m, &keys[i]) == NULL);
		CHECK_EQ(wfpr__addrmap_put(&m, &keys[i], &keys[i]), 0);
	}
	CHECK(m.n_buckets >= 2 * N / 2); /* it grew */
	int found = 0;
	for (int i = 0; i < 2 * N; i++)
		found += wfpr__addrmap_get(&m, &keys[i]) == &keys[i];
	CHECK_EQ(found, 2 * N);
	/* an address it never had, and a port it never had */
	struct sockaddr_storage other = keys[0];
	((struct sockaddr_in *)&other)->sin_port = htons(9);
	CHECK(wfpr__addrmap_get(&m, &other) == NULL);
	for (int i = 0; i < 2 * N; i += 2)
		wfpr__addrmap_remove(&m, &keys[i]);
	wfpr__addrmap_remove(&m, &other); /* not there: nothing happens */
	found = 0;
	for (int i = 0; i < 2 * N; i++)
		found += wfpr__addrmap_get(&m, &keys[i]) == (i % 2 ? &keys[i] : NULL);
	CHECK_EQ(found, 2 * N);
	CHECK_EQ(m.count, N);
	wfpr__addrmap_free(&m);
}

int main(void)
{
	RUN(address_map_finds_each_flow);
	RUN(c_hooks_decide);
	RUN(udp_flows_through_two_engines);
	RUN(a_large_one_way_stream);
	RUN(two_engines_cooperate);
	RUN(rules_decide);
	RUN(need_more_holds_bytes);
	RUN(refused_destination_resets_the_client);
	RUN(stop_settles_the_backlog);
	RUN(the_last_bytes_carry_the_fin);
	RUN(many_connections_at_once);
	TEST_MAIN_END();
}
