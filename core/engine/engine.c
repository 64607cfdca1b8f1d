/* The service engine: one epoll loop, non-blocking sockets, a buffer
 * per direction (small, grown for a stream). A connection moves through
 * three phases: QUERY (at once
 * when the record is there, else overlapped with its event fd in the
 * epoll set), CONNECT (a
 * non-blocking connect to the original destination, with the record SET),
 * RELAY (both directions pumped edge-triggered, half-close passed on). */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <pthread.h>
#include <stddef.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>
#include "addrmap.h"
#include "wfpr/engine.h"
#include "wfpr/error.h"
#include "wfpr/ioctl.h"
#include "wfpr/record.h"
#include "wfpr/socket.h"

#define DEFAULT_BUFFER (1u << 20)
/* A connection starts with buffers this big (or opts.buffer_size, if
 * smaller); a direction whose buffer fills while its source has more grows
 * to opts.buffer_size. Short exchanges (a request, a reply) never pay for
 * the big buffers; a stream gets them after its first read. */
#define START_BUFFER (16u << 10)
#define FIRST_RECORD_TRY 1024

enum phase { PHASE_QUERY, PHASE_CONNECT, PHASE_RELAY };
enum kind { KIND_LISTENER, KIND_STOP, KIND_RELOAD, KIND_CLIENT, KIND_UPSTREAM, KIND_QUERY, KIND_UDP, KIND_FLOW };

/* A set of rules and the connections and flows that started under it: they
 * keep it to their end, after wfpr_engine_replace_rules gave new ones to
 * the next (docs/rules.md, "Reloading"). */
typedef struct rules_use {
	struct rules_use *next;
	wfpr_rules *rules;
	size_t users;
	wfpr_engine_rules_release_fn release; /* NULL for opts.rules: the caller's */
	void *release_user;
} rules_use;

typedef struct watch {
	enum kind kind;
	struct conn *conn;
	struct flow *flow;
} watch;

/* a sender starts a new flow after WFPR_UDP_FLOW_IDLE_MS: end ours later */
#define DEFAULT_UDP_IDLE_MS (WFPR_UDP_FLOW_IDLE_MS + WFPR_UDP_FLOW_GRACE_MS)
#define MAX_DATAGRAM 65536
#define REPLY_BATCH 16 /* replies taken per system call */

/* A UDP flow: one client address, one outbound socket. */
typedef struct flow {
	struct flow *prev, *next;
	bool closed, blocked;
	int upstream;
	watch w;
	struct sockaddr_storage client;
	struct sockaddr_storage context[2];
	uint8_t *record;
	size_t record_len;
	wfpr_annotation *notes; /* what the rule said (conn:annotate), passed on with the flow */
	size_t n_notes;
	wfpr_rule_conn info;
	wfpr_verdict verdict;
	rules_use *ru; /* the rules it started under */
	uint64_t up, down;
	struct timespec started, last;
} flow;

typedef struct half {
	uint8_t *buf;
	size_t len, cap;
	bool mapped;   /* buf is a mapping of its own (a stream's), not heap memory */
	bool ready;    /* the source may have bytes: an event came, and no read since came up short */
	bool hup;      /* the source's end came (RDHUP/HUP): read to the end whatever the sizes */
	bool eof;      /* the source said it is done */
	bool shut;     /* we passed the half-close on */
	uint64_t total;
	/* need_more: bytes the rule asked to see again with the next ones */
	uint8_t *held;
	size_t held_len, held_need; /* held_need: on_data again once held_len reaches it */
} half;

typedef struct conn {
	struct conn *prev, *next;
	wfpr_engine *engine;
	bool closed; /* on the dead list: events later in this batch ignore it */
	enum phase phase;
	int client, upstream;
	watch w_client, w_upstream, w_query;
	bool overlapped; /* ov is set up: the record was not there at once */
	wfpr_overlapped ov;
	uint8_t *record;
	uint32_t record_cap, record_len;
	struct sockaddr_storage context[2];
	wfpr_annotation *notes; /* what the rule said (conn:annotate), passed on with the connection */
	size_t n_notes;
	wfpr_rule_conn info;
	wfpr_verdict verdict;
	rules_use *ru;  /* the rules it started under (once announced) */
	FILE *transcript; /* opts.record_dir: what the rules see, for `wfpr rules test` */
	int reserve;    /* its upstream socket, made before the accept (-1 once in use as c->upstream) */
	bool announced; /* its connect line is out and the rules saw it: a close line and on_close follow */
	half up, down; /* up: client to upstream */
	struct timespec started, last;
} conn;

struct wfpr_engine {
	wfpr_engine_options opts;
	char *name;
	int epoll_fd, listen_fd, stop_fd, reload_fd;
	int spare; /* the next connection's upstream socket (-1: none yet) */
	watch w_listener, w_stop, w_reload;
	rules_use *current, *retired;
	pthread_mutex_t pending_lock;
	rules_use *pending; /* from wfpr_engine_replace_rules, for the loop to take */
	struct sockaddr_storage address;
	conn *conns;
	conn *dead; /* freed after the epoll batch that closed them */
	int udp_fd;
	watch w_udp;
	uint8_t *datagram; /* REPLY_BATCH * MAX_DATAGRAM bytes: this engine's own, as engines run on their own threads */
	flow *flows, *dead_flows;
	wfpr__addrmap flow_of; /* each live flow by its client's address */
	struct {
		char *buf;       /* lines waiting for a slow reader */
		size_t len;
		uint64_t dropped;
	} log;
	bool stopping;                   /* wfpr_engine_stop came: settling (below) */
	struct timespec stop_asked;
	bool shedding;                   /* at a resource limit: the listener rests */
	struct timespec shed_since;
	uint64_t unflowed;               /* datagrams dropped since the last "drop" line */
	struct timespec unflowed_logged;
	struct timespec swept;           /* the last look for idle flows and connections */
	wfpr_engine_stats stats;
	uint8_t *scratch; /* one chunk, out of the way of held bytes that go on before it */
};

/* Unlink x (a conn or a flow) from the live list at head and put it on the
 * dead list; it is freed after the epoll batch, which may still name it. */
#define RETIRE(head, dead, x)                 \
	do {                                      \
		if ((x)->prev)                        \
			(x)->prev->next = (x)->next;      \
		else                                  \
			(head) = (x)->next;               \
		if ((x)->next)                        \
			(x)->next->prev = (x)->prev;      \
		(x)->closed = true;                   \
		(x)->next = (dead);                   \
		(dead) = (x);                         \
	} while (0)

/* The length of a's sockaddr (IPv4 or IPv6). */
static socklen_t sockaddr_len(const struct sockaddr_storage *a)
{
	return a->ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
}

static int64_t ms_between(const struct timespec *since, const struct timespec *now)
{
	return (now->tv_sec - since->tv_sec) * 1000 + (now->tv_nsec - since->tv_nsec) / 1000000;
}

static int64_t elapsed_ms(const struct timespec *since)
{
	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC, &now);
	return ms_between(since, &now);
}

/* ---- the JSON-lines log ---- */

/* The length of the valid UTF-8 sequence at s (0: none; overlong forms
 * and surrogates count as invalid). */
static size_t utf8_sequence(const unsigned char *s)
{
	size_t n = s[0] >= 0xf0 && s[0] <= 0xf4 ? 4 : s[0] >= 0xe0 ? 3 : s[0] >= 0xc2 && s[0] < 0xe0 ? 2 : 0;
	for (size_t i = 1; i < n; i++)
		if ((s[i] & 0xc0) != 0x80)
			return 0;
	if ((n == 3 && ((s[0] == 0xe0 && s[1] < 0xa0) || (s[0] == 0xed && s[1] >= 0xa0))) ||
	    (n == 4 && ((s[0] == 0xf0 && s[1] < 0x90) || (s[0] == 0xf4 && s[1] >= 0x90))))
		return 0;
	return n;
}

/* A JSON string: names and paths from other processes may hold any bytes,
 * so a byte that is not valid UTF-8 becomes U+FFFD and the line stays JSON. */
static void json_string(FILE *f, const char *s)
{
	fputc('"', f);
	for (const unsigned char *p = (const unsigned char *)s; *p;) {
		size_t n;
		if (*p == '"' || *p == '\\')
			fprintf(f, "\\%c", *p++);
		else if (*p < 0x20)
			fprintf(f, "\\u%04x", *p++);
		else if (*p < 0x80)
			fputc(*p++, f);
		else if ((n = utf8_sequence(p)) > 0)
			p += fwrite(p, 1, n, f);
		else
			fputs("\\ufffd", f), p++;
	}
	fputc('"', f);
}

/* Lines a slow log reader (a FIFO, a pipe) has not taken yet wait here, up
 * to LOG_BACKLOG bytes; past that they are dropped and counted: the log
 * never stalls relaying. Each line is one write, so lines from several
 * engines never interleave. */
#define LOG_BACKLOG (1u << 20)

static void log_dropped(wfpr_engine *e, const char *why)
{
	if (e->log.dropped++ == 0)
		fprintf(stderr, "wfpr proxy %s: the log cannot take more (%s): dropping lines, and counting them\n", e->name,
		        why);
}

/* A short write (a full disk) left part of a line: take it back, so that
 * the log stays whole JSON lines; only if nothing was appended after it. */
static void undo_partial(int fd, ssize_t written)
{
	struct stat st;
	off_t end = lseek(fd, 0, SEEK_CUR);
	if (written > 0 && end >= written && fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_size == end &&
	    ftruncate(fd, end - written) != 0) {
		/* the line stays cut; the count and stderr said so */
	}
}

/* Write whole lines from the backlog, oldest first, until the fd would block. */
static void log_flush(wfpr_engine *e)
{
	if (e->log.len == 0)
		return;
	size_t done = 0;
	while (done < e->log.len) {
		const char *line = e->log.buf + done, *end = memchr(line, '\n', e->log.len - done);
		size_t n = (size_t)(end - line) + 1;
		ssize_t w = write(e->opts.log_fd, line, n);
		if (w < 0 && errno == EAGAIN)
			break;
		if (w != (ssize_t)n) {
			undo_partial(e->opts.log_fd, w);
			log_dropped(e, w < 0 ? strerror(errno) : "a short write; the disk may be full");
		}
		done += n;
	}
	memmove(e->log.buf, e->log.buf + done, e->log.len - done);
	e->log.len -= done;
}

static void log_write(wfpr_engine *e, const char *line, size_t len)
{
	log_flush(e);
	if (e->log.len == 0) {
		ssize_t w = write(e->opts.log_fd, line, len);
		if (w == (ssize_t)len)
			return;
		if (w >= 0 || errno != EAGAIN) {
			undo_partial(e->opts.log_fd, w);
			log_dropped(e, w < 0 ? strerror(errno) : "a short write; the disk may be full");
			return;
		}
	}
	if (e->log.len + len > LOG_BACKLOG || (!e->log.buf && !(e->log.buf = malloc(LOG_BACKLOG)))) {
		log_dropped(e, "its reader is not reading");
		return;
	}
	memcpy(e->log.buf + e->log.len, line, len);
	e->log.len += len;
}

/* One JSON line. hook and reason (NULL: none) say which rule hook gave the
 * verdict, and why (docs/rules.md, "Reasons"). */
/* {"key":"value",...} */
static void json_annotations(FILE *f, const wfpr_annotation *a, size_t n)
{
	fputc('{', f);
	for (size_t i = 0; i < n; i++) {
		fputs(i ? "," : "", f);
		json_string(f, a[i].key);
		fputc(':', f);
		json_string(f, a[i].value);
	}
	fputc('}', f);
}

/* One JSON line. own: the annotations this proxy put on the connection it
 * passed on ("annotated"); each hop's, from the record, are "annotations". */
static void log_line(wfpr_engine *e, const wfpr_rule_conn *info, const char *proto, const uint8_t *record,
                     size_t record_len, uint64_t up, uint64_t down, const char *event, const char *verdict,
                     const char *error, const char *hook, const char *reason, const wfpr_annotation *own,
                     size_t n_own)
{
	if (e->opts.log_fd < 0)
		return;
	char *text = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&text, &len);
	if (!f)
		return;
	struct timespec now;
	clock_gettime(CLOCK_REALTIME, &now);
	char addr[64];
	fprintf(f, "{\"time\":%.6f,\"proxy\":", (double)now.tv_sec + (double)now.tv_nsec / 1e9);
	json_string(f, e->name);
	fprintf(f, ",\"event\":\"%s\",\"id\":%llu,\"proto\":\"%s\",\"client\":", event, (unsigned long long)info->id, proto);
	json_string(f, wfpr_sockaddr_format(addr, sizeof(addr), &info->client));
	fputs(",\"original_dst\":", f);
	json_string(f, wfpr_sockaddr_format(addr, sizeof(addr), &info->original_dst));
	fprintf(f, ",\"state\":\"%s\",\"hops\":[", wfpr_redirect_state_name(info->state));
	wfpr_records *r = NULL;
	if (record_len && wfpr_records_decode(&r, record, record_len) == 0) {
		for (size_t i = 0; i < r->hop_count; i++) {
			char name[65];
			const char *known = e->opts.hop_name ? e->opts.hop_name(e->opts.hop_name_user, r->hops[i].redirector_id,
			                                                        name, sizeof(name))
			                                     : NULL;
			fputs(i ? "," : "", f);
			json_string(f, known ? known : wfpr_redirector_id_format(name, sizeof(name), r->hops[i].redirector_id));
		}
	}
	fputs("],\"annotations\":[", f);
	for (size_t i = 0; r && i < r->hop_count; i++) {
		fputs(i ? "," : "", f);
		json_annotations(f, r->hops[i].annotations, r->hops[i].annotation_count);
	}
	wfpr_records_free(r);
	fputs("],\"annotated\":", f);
	json_annotations(f, own, n_own);
	fputs(",\"process\":", f);
	if (info->process.pid) {
		fprintf(f, "{\"pid\":%u,\"uid\":%u,\"name\":", info->process.pid, info->process.uid);
		json_string(f, info->process.name);
		fputs(",\"exe\":", f);
		json_string(f, info->process.exe);
		fputc('}', f);
	} else {
		fputs("null", f);
	}
	fputs(",\"verdict\":", f);
	if (verdict)
		json_string(f, verdict);
	else
		fputs("null", f);
	if (hook) {
		fputs(",\"hook\":", f);
		json_string(f, hook);
	}
	fputs(",\"reason\":", f);
	if (reason && *reason)
		json_string(f, reason);
	else
		fputs("null", f);
	fprintf(f, ",\"bytes_up\":%llu,\"bytes_down\":%llu,\"error\":", (unsigned long long)up,
	        (unsigned long long)down);
	if (error)
		json_string(f, error);
	else
		fputs("null", f);
	fputs("}\n", f);
	fclose(f);
	log_write(e, text, len);
	free(text);
}

static void log_event(wfpr_engine *e, conn *c, const char *event, const char *verdict, const char *error)
{
	log_line(e, &c->info, "tcp", c->record, c->record_len, c->up.total, c->down.total, event, verdict, error, NULL,
	         NULL, c->notes, c->n_notes);
}
/* The reason the Lua rules gave with their last verdict ("" for C hooks). */
static const char *rule_reason(const wfpr_engine *e, const rules_use *ru)
{
	return !e->opts.hooks && ru && ru->rules ? wfpr_rules_reason(ru->rules) : "";
}

/* The annotations the rule's on_connect made (conn:annotate), for the
 * socket that passes the connection on; NULL (*n 0) when none. */
static wfpr_annotation *take_annotations(const wfpr_engine *e, const rules_use *ru, size_t *n)
{
	wfpr_annotation got[WFPR_ANNOTATIONS_MAX];
	*n = !e->opts.hooks && ru && ru->rules ? wfpr_rules_annotations(ru->rules, got, WFPR_ANNOTATIONS_MAX) : 0;
	wfpr_annotation *copy = *n ? malloc(*n * sizeof(*copy)) : NULL;
	if (copy)
		memcpy(copy, got, *n * sizeof(*copy));
	else
		*n = 0;
	return copy;
}

/* Put them on s, whose records are SET: 0 or the error. */
static int annotate(wfpr_socket_t s, const wfpr_annotation *notes, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (wfpr_annotate(s, notes[i].key, notes[i].value) != 0)
			return wfpr_get_last_error();
	return 0;
}

/* An error line's text for annotations that could not be put on. */
static const char *annotate_error(char *buf, size_t len, int err)
{
	const char *name = wfpr_err_name(err);
	snprintf(buf, len, "annotations not passed on: %s", name ? name : "error");
	return buf;
}

/* A rule's verdict v that changed a connection or flow: a "verdict" line,
 * with the rule's reason unless the host gives its own (reason). */
static void log_verdict(wfpr_engine *e, const rules_use *ru, const wfpr_rule_conn *info, const char *proto,
                        const uint8_t *record, size_t record_len, uint64_t up, uint64_t down, const char *hook,
                        wfpr_data_verdict v, const char *reason)
{
	const char *name = v == WFPR_DATA_CLOSE ? "close" : v == WFPR_DATA_DROP ? "drop" : v == WFPR_DATA_REPLACE ? "replace"
	                                                                                                          : "pass";
	log_line(e, info, proto, record, record_len, up, down, "verdict", name, NULL, hook,
	         reason ? reason : rule_reason(e, ru), NULL, 0);
}



static const char *verdict_name(wfpr_verdict v)
{
	return v == WFPR_VERDICT_INSPECT ? "inspect" : v == WFPR_VERDICT_BLOCK ? "block" : "pass";
}

/* ---- the hooks: C (opts.hooks) or Lua (opts.rules) ---- */

/* A new connection or flow takes the current rules. */
static rules_use *rules_take(wfpr_engine *e)
{
	e->current->users++;
	return e->current;
}

/* Free ru, giving its rules back to whoever replaced them in. */
static void rules_drop(rules_use *ru)
{
	if (ru->release)
		ru->release(ru->release_user, ru->rules);
	free(ru);
}

/* A connection or flow that started under ru ended: retired rules that
 * nothing uses any more are given back. */
static void rules_leave(wfpr_engine *e, rules_use *ru)
{
	if (!ru || --ru->users || ru == e->current)
		return;
	for (rules_use **p = &e->retired; *p; p = &(*p)->next)
		if (*p == ru) {
			*p = ru->next;
			break;
		}
	rules_drop(ru);
}

/* The loop's side of wfpr_engine_replace_rules. */
static void rules_switch(wfpr_engine *e)
{
	uint64_t n;
	if (read(e->reload_fd, &n, sizeof(n)) < 0) {
		/* nothing pending after all */
	}
	pthread_mutex_lock(&e->pending_lock);
	rules_use *next = e->pending;
	e->pending = NULL;
	pthread_mutex_unlock(&e->pending_lock);
	if (!next)
		return;
	rules_use *old = e->current;
	e->current = next;
	if (old->users == 0) {
		rules_drop(old);
	} else {
		old->next = e->retired;
		e->retired = old;
	}
}

static wfpr_verdict hook_connect(wfpr_engine *e, const rules_use *ru, const wfpr_rule_conn *info)
{
	const wfpr_engine_hooks *h = e->opts.hooks;
	if (h)
		return h->on_connect ? h->on_connect(h->user, info) : WFPR_VERDICT_PASS;
	return ru->rules ? wfpr_rules_on_connect(ru->rules, info) : WFPR_VERDICT_PASS;
}

/* Is there anything to show an inspected connection's data to? */
static bool has_data_hook(const wfpr_engine *e, const rules_use *ru)
{
	return e->opts.hooks ? e->opts.hooks->on_data != NULL : ru && ru->rules != NULL;
}

static wfpr_data_verdict hook_data(wfpr_engine *e, const rules_use *ru, const wfpr_rule_conn *info, int direction,
                                   bool datagram, const void *data, size_t len, const void **out, size_t *out_len)
{
	const wfpr_engine_hooks *h = e->opts.hooks;
	if (h)
		return h->on_data(h->user, info, direction, data, len, out, out_len);
	return datagram ? wfpr_rules_on_datagram(ru->rules, info, direction, data, len, out, out_len)
	                : wfpr_rules_on_data(ru->rules, info, direction, data, len, out, out_len);
}

static void hook_close(wfpr_engine *e, const rules_use *ru, const wfpr_rule_conn *info,
                       const wfpr_rule_close_stats *st)
{
	const wfpr_engine_hooks *h = e->opts.hooks;
	if (h && h->on_close)
		h->on_close(h->user, info, st);
	else if (!h && ru && ru->rules)
		wfpr_rules_on_close(ru->rules, info, st);
}

/* conn.state for this proxy's redirector */
static void redirect_state(wfpr_engine *e, wfpr_rule_conn *info)
{
	if (e->opts.handle)
		wfpr_query_redirect_state(&info->state, info->records, info->records_len, e->opts.handle);
	else if (e->opts.redirector_id)
		wfpr_redirect_state_for_id(&info->state, info->records, info->records_len, e->opts.redirector_id);
}

/* Who made the connection: its first hop's process (later hops were made
 * by the proxies before this one), the path read from /proc where the hop
 * carries none (the eBPF backend's). */
static void process_of(wfpr_rule_conn *info)
{
	wfpr_records *r = NULL;
	memset(&info->process, 0, sizeof(info->process));
	if (!info->records_len || wfpr_records_decode(&r, info->records, info->records_len) != 0)
		return;
	info->process = r->hops[0].process;
	wfpr_records_free(r);
	if (info->process.pid && !info->process.exe[0])
		wfpr_process_fill(&info->process);
}

/* ---- connections ---- */

static int watch_fd(wfpr_engine *e, int op, int fd, uint32_t events, watch *w)
{
	struct epoll_event ev = {.events = events, .data.ptr = w};
	return epoll_ctl(e->epoll_fd, op, fd, &ev);
}

/* Connection and flow ids: unique in the process, across its engines
 * (workers, and the IPv4 and IPv6 listeners of one proxy), so that log
 * lines pair up and conn.tag never mixes two connections. */
static uint64_t next_id(void)
{
	static uint64_t last;
	return __atomic_add_fetch(&last, 1, __ATOMIC_RELAXED);
}

/* ---- transcripts (opts.record_dir): docs/rules.md, "Testing a rule offline" ---- */

static void record_open(wfpr_engine *e, conn *c)
{
	static _Atomic unsigned long seq;
	char path[4096], client[64], dst[64];
	snprintf(path, sizeof(path), "%s/%s-%d-%lu.txt", e->opts.record_dir, e->name, (int)getpid(), ++seq);
	int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0 || !(c->transcript = fdopen(fd, "w"))) {
		if (fd >= 0)
			close(fd);
		return; /* a transcript is a help, never a reason to drop the connection */
	}
	fprintf(c->transcript, "# recorded by wfpr proxy %s; replay: wfpr rules test RULES.lua %s\nconnect tcp %s -> %s\n",
	        e->name, path, wfpr_sockaddr_format(client, sizeof(client), &c->info.client),
	        wfpr_sockaddr_format(dst, sizeof(dst), &c->info.original_dst));
}

static void record_chunk(conn *c, int direction, const uint8_t *p, size_t n)
{
	if (!c->transcript)
		return;
	fputs(direction ? "down hex " : "up hex ", c->transcript);
	for (size_t i = 0; i < n; i++)
		fprintf(c->transcript, "%02x", p[i]);
	fputc('\n', c->transcript);
}

static void record_close(conn *c)
{
	if (!c->transcript)
		return;
	fputs("close\n", c->transcript);
	fclose(c->transcript);
	c->transcript = NULL;
}

static void close_conn(conn *c, bool reset, const char *error)
{
	wfpr_engine *e = c->engine;
	if (reset) {
		struct linger l = {1, 0}; /* close with RST, as the peer's reset came */
		setsockopt(c->client, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
		if (c->upstream >= 0)
			setsockopt(c->upstream, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
	}
	/* every connect line gets its close or error line, and every
	 * connection the rules saw gets on_close (which frees conn.tag), blocked
	 * ones and ones whose upstream failed too */
	if (c->announced || error)
		log_event(e, c, error ? "error" : "close", verdict_name(c->verdict), error);
	record_close(c);
	if (c->announced) {
		wfpr_rule_close_stats st = {c->up.total, c->down.total, (uint64_t)elapsed_ms(&c->started)};
		hook_close(e, c->ru, &c->info, &st);
		rules_leave(e, c->ru);
		c->ru = NULL;
	}
	if (error)
		e->stats.failed++;
	e->stats.bytes_up += c->up.total;
	e->stats.bytes_down += c->down.total;
	e->stats.active--;
	if (c->reserve >= 0)
		close(c->reserve);
	/* closesocket aborts a pending QUERY before its buffer goes away */
	wfpr_closesocket(c->client);
	if (c->upstream >= 0)
		wfpr_closesocket(c->upstream);
	if (c->overlapped)
		wfpr_overlapped_dispose(&c->ov);
	RETIRE(e->conns, e->dead, c);
}

#define PAGES(n) (((n) + 4095) & ~(size_t)4095)

/* Give h's buffer size bytes, keeping its h->len bytes. One past
 * START_BUFFER (a stream's) is a mapping of its own rather than heap memory,
 * so that it goes back to the system when the stream ends, whatever the
 * allocator would keep. False when out of memory (h is as it was). */
static bool buf_resize(half *h, size_t size)
{
	uint8_t *p;
	if (size <= START_BUFFER && !h->mapped) {
		if (!(p = realloc(h->buf, size)))
			return false;
	} else if (size <= START_BUFFER) {
		if (!(p = malloc(size)))
			return false;
		memcpy(p, h->buf, h->len);
		munmap(h->buf, PAGES(h->cap));
	} else if (h->mapped) {
		if ((p = mremap(h->buf, PAGES(h->cap), PAGES(size), MREMAP_MAYMOVE)) == MAP_FAILED)
			return false;
	} else {
		if ((p = mmap(NULL, PAGES(size), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)) == MAP_FAILED)
			return false;
		memcpy(p, h->buf, h->len);
		free(h->buf);
	}
	h->buf = p;
	h->cap = size;
	h->mapped = size > START_BUFFER;
	return true;
}

static void buf_free(half *h)
{
	if (h->mapped)
		munmap(h->buf, PAGES(h->cap));
	else
		free(h->buf);
	h->buf = NULL;
}

static void bury_dead(wfpr_engine *e)
{
	for (conn *c = e->dead, *next; c; c = next) {
		next = c->next;
		free(c->record);
		free(c->notes);
		buf_free(&c->up);
		buf_free(&c->down);
		free(c->up.held);
		free(c->down.held);
		free(c);
	}
	e->dead = NULL;
}

static void start_connect(conn *c);
static void pump(conn *c);

/* The record is here: read the context, ask the rule, go on. */
static void records_ready(conn *c)
{
	wfpr_engine *e = c->engine;
	uint32_t bytes = 0;
	/* done at once still signals the event: stop watching it */
	if (c->overlapped)
		epoll_ctl(e->epoll_fd, EPOLL_CTL_DEL, c->ov.event_fd, NULL);
	if (wfpr_ioctl(c->client, WFPR_SIO_QUERY_WFP_CONNECTION_REDIRECT_CONTEXT, NULL, 0, c->context,
	               sizeof(c->context), &bytes, NULL, NULL) != 0 ||
	    bytes != sizeof(c->context)) {
		close_conn(c, true, "no default redirect context");
		return;
	}
	c->info.original_dst = c->context[0];
	c->info.records = c->record;
	c->info.records_len = c->record_len;
	redirect_state(e, &c->info);
	process_of(&c->info);
	c->ru = rules_take(e);
	c->verdict = hook_connect(e, c->ru, &c->info);
	c->announced = true;
	if (c->verdict == WFPR_VERDICT_BLOCK) {
		e->stats.blocked++;
		log_line(e, &c->info, "tcp", c->record, c->record_len, 0, 0, "connect", "block", NULL, "on_connect",
		         rule_reason(e, c->ru), NULL, 0);
		close_conn(c, true, NULL);
		return;
	}
	c->notes = take_annotations(e, c->ru, &c->n_notes);
	if (c->verdict == WFPR_VERDICT_INSPECT) {
		e->stats.inspected++;
		if (e->opts.record_dir)
			record_open(e, c);
	} else {
		e->stats.passed++;
	}
	log_event(e, c, "connect", verdict_name(c->verdict), NULL);
	start_connect(c);
}

/* QUERY the record on the client socket made blocking for the one call:
 * 0, or the QUERY's error. */
static int query_blocking(conn *c, uint32_t *bytes)
{
	int fl = fcntl(c->client, F_GETFL);
	if (fl < 0 || fcntl(c->client, F_SETFL, fl & ~O_NONBLOCK) != 0)
		return wfpr_err_from_errno(errno);
	int err = wfpr_ioctl(c->client, WFPR_SIO_QUERY_WFP_CONNECTION_REDIRECT_RECORDS, NULL, 0, c->record,
	                     c->record_cap, bytes, NULL, NULL) == 0 ? 0 : wfpr_get_last_error();
	fcntl(c->client, F_SETFL, fl);
	return err;
}

/* QUERY the record: at once (the client socket is non-blocking); if it is
 * still on its way, overlapped, with the event fd in the epoll set, or,
 * with no descriptor left for the event, waiting here. */
static void query_records(conn *c)
{
	uint32_t bytes = 0;
	if (c->overlapped)
		wfpr_overlapped_reset(&c->ov);
	if (wfpr_ioctl(c->client, WFPR_SIO_QUERY_WFP_CONNECTION_REDIRECT_RECORDS, NULL, 0, c->record, c->record_cap,
	               &bytes, c->overlapped ? &c->ov : NULL, NULL) == 0) {
		c->record_len = bytes;
		records_ready(c);
		return;
	}
	int err = wfpr_get_last_error();
	if (err == WFPR_WSA_IO_PENDING)
		return; /* the event fd is in the epoll set */
	if (err == WFPR_WSAEWOULDBLOCK && !c->overlapped && wfpr_overlapped_init(&c->ov) != 0) {
		/* no descriptor for the event (the proxy is at its limit) */
		if ((err = query_blocking(c, &bytes)) == 0) {
			c->record_len = bytes;
			records_ready(c);
			return;
		}
	} else if (err == WFPR_WSAEWOULDBLOCK && !c->overlapped) {
		c->overlapped = true; /* ov is set up: closing disposes of it */
		if (wfpr_socket_set_overlapped(c->client, 1) != 0) {
			close_conn(c, true, "cannot wait for the record");
			return;
		}
		watch_fd(c->engine, EPOLL_CTL_ADD, c->ov.event_fd, EPOLLIN, &c->w_query);
		query_records(c);
		return;
	}
	if (err == WFPR_ERROR_INSUFFICIENT_BUFFER && bytes > c->record_cap) {
		uint8_t *grown = realloc(c->record, bytes);
		if (grown) {
			c->record = grown;
			c->record_cap = bytes;
			query_records(c);
			return;
		}
	}
	close_conn(c, true, wfpr_err_name(err) ? wfpr_err_name(err) : "QUERY failed");
}

static void query_completed(conn *c)
{
	uint32_t bytes = 0;
	if (c->phase != PHASE_QUERY)
		return; /* a completion signalled for a QUERY that already finished at once */
	if (wfpr_get_overlapped_result(c->client, &c->ov, &bytes, 0, NULL) == 0) {
		c->record_len = bytes;
		records_ready(c);
	} else if (wfpr_get_last_error() == WFPR_ERROR_INSUFFICIENT_BUFFER) {
		query_records(c);
	} else if (wfpr_get_last_error() != WFPR_WSA_IO_INCOMPLETE) {
		close_conn(c, true, wfpr_err_name(wfpr_get_last_error()));
	}
}

static void start_connect(conn *c)
{
	wfpr_engine *e = c->engine;
	struct sockaddr_storage *dst = &c->context[0];
	uint32_t bytes;
	c->upstream = c->reserve;
	c->reserve = -1;
	if (dst->ss_family != e->address.ss_family) { /* made for the listener's family: remade for this one */
		close(c->upstream);
		c->upstream = wfpr_socket(dst->ss_family, SOCK_STREAM | SOCK_NONBLOCK, 0, 0);
	}
	if (c->upstream < 0 ||
	    wfpr_ioctl(c->upstream, WFPR_SIO_SET_WFP_CONNECTION_REDIRECT_RECORDS, c->record, c->record_len, NULL, 0,
	               &bytes, NULL, NULL) != 0) {
		close_conn(c, true, "cannot set up the outbound socket");
		return;
	}
	int err = annotate(c->upstream, c->notes, c->n_notes);
	char why[96];
	if (err)
		log_event(e, c, "error", NULL, annotate_error(why, sizeof(why), err));
	c->phase = PHASE_CONNECT;
	socklen_t len = sockaddr_len(dst);
	int rc = wfpr_connect(c->upstream, (struct sockaddr *)dst, len);
	if (rc != 0 && wfpr_get_last_error() != WFPR_WSAEWOULDBLOCK) {
		close_conn(c, true, wfpr_err_name(wfpr_get_last_error()));
		return;
	}
	watch_fd(e, EPOLL_CTL_ADD, c->upstream, EPOLLOUT | EPOLLIN | EPOLLRDHUP | EPOLLET, &c->w_upstream);
	if (rc == 0) {
		c->phase = PHASE_RELAY;
		watch_fd(e, EPOLL_CTL_ADD, c->client, EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, &c->w_client);
		pump(c);
	}
}

static void connect_progress(conn *c)
{
	wfpr_engine *e = c->engine;
	struct sockaddr_storage *dst = &c->context[0];
	socklen_t len = sockaddr_len(dst);
	/* completing the connect through the library publishes the next hop's record */
	if (wfpr_connect(c->upstream, (struct sockaddr *)dst, len) != 0) {
		int err = wfpr_get_last_error();
		if (err != WFPR_WSAEALREADY && err != WFPR_WSAEWOULDBLOCK)
			close_conn(c, true, wfpr_err_name(err));
		return;
	}
	c->phase = PHASE_RELAY;
	watch_fd(e, EPOLL_CTL_ADD, c->client, EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, &c->w_client);
	pump(c);
}

/* Keep chunk (len bytes) in h's held bytes, for need_more (chunk may be
 * the held bytes themselves); false when they would pass the cap. */
static bool hold(half *h, const uint8_t *chunk, size_t len)
{
	if (chunk == h->held)
		return true;
	if (h->held_len + len > WFPR_RULES_HOLD_MAX)
		return false;
	if (!h->held && !(h->held = malloc(WFPR_RULES_HOLD_MAX)))
		return false;
	memcpy(h->held + h->held_len, chunk, len);
	h->held_len += len;
	return true;
}

#define HELD -1 /* inspect_chunk: need_more; the bytes are held */
#define PAST_CAP "need_more past the 64 KiB a connection may hold"
#define AT_END "the stream ended before the bytes need_more waited for"

/* What on_data says of chunk (len bytes, or h->held itself), with
 * need_more handled: the bytes are held (HELD). When they cannot be (past
 * the cap, or no_more says why not), they get the rules' default verdict.
 * A verdict that changes the connection is logged. */
static int inspect_chunk(conn *c, half *h, int direction, const uint8_t *chunk, size_t len, const char *no_more,
                         const void **out, size_t *out_len)
{
	wfpr_engine *e = c->engine;
	*out = chunk;
	*out_len = len;
	wfpr_data_verdict v = hook_data(e, c->ru, &c->info, direction, false, chunk, len, out, out_len);
	const char *reason = NULL;
	if (v == WFPR_DATA_NEED_MORE) {
		size_t want = *out_len;
		size_t already = chunk == h->held ? 0 : h->held_len;
		if (!no_more && already + len + want <= WFPR_RULES_HOLD_MAX && hold(h, chunk, len)) {
			h->held_need = h->held_len + want;
			return HELD;
		}
		v = !e->opts.hooks && c->ru->rules ? wfpr_rules_default_data_verdict(c->ru->rules) : WFPR_DATA_PASS;
		reason = no_more ? no_more : PAST_CAP;
	}
	if (v == WFPR_DATA_PASS || reason) {
		*out = chunk;
		*out_len = len;
	}
	if (v != WFPR_DATA_PASS || reason)
		log_verdict(e, c->ru, &c->info, "tcp", c->record, c->record_len, c->up.total, c->down.total, "on_data", v,
		            reason);
	return (int)v;
}

/* out (len bytes) goes on to h's reader. False when out of memory. */
static bool emit(half *h, const void *out, size_t len)
{
	if (out == h->buf + h->len && len <= h->cap - h->len) {
		h->len += len; /* read in place, and passed as it is */
		return true;
	}
	if (len > h->cap - h->len && !buf_resize(h, h->len + len)) /* a longer replacement, or held bytes */
		return false;
	memmove(h->buf + h->len, out, len); /* it may be part of the chunk read in place */
	h->len += len;
	return true;
}

/* A full buffer whose source has more: to the full size, once. False when
 * it is that big already (or out of memory: it keeps the one it has). */
static bool grow(half *h, size_t full)
{
	return h->cap < full && buf_resize(h, full);
}

/* One verdict on chunk: false to stop (closed by the rule: *closed_by_rule;
 * or out of memory). */
static bool apply(conn *c, half *h, int direction, const uint8_t *chunk, size_t len, const char *no_more,
                  bool *closed_by_rule, bool *ok)
{
	const void *out;
	size_t out_len;
	int v = inspect_chunk(c, h, direction, chunk, len, no_more, &out, &out_len);
	if (v == HELD)
		return true;
	bool was_held = chunk == h->held;
	*ok = v == WFPR_DATA_CLOSE || v == WFPR_DATA_DROP || emit(h, out, out_len);
	if (was_held)
		h->held_len = h->held_need = 0; /* asked about: no longer held */
	if (v == WFPR_DATA_CLOSE)
		*closed_by_rule = true;
	return !*closed_by_rule && *ok;
}

/* Read from src into h (through the rule when inspected), adding what it
 * read to *moved; false on a reset. */
static bool fill(conn *c, int src, half *h, int direction, bool *closed_by_rule, size_t *moved)
{
	wfpr_engine *e = c->engine;
	while (h->ready && !h->eof && (h->len < h->cap || grow(h, e->opts.buffer_size))) {
		/* inspected or not, the bytes are read in place: a chunk the rule
		 * passes as it is goes on with no copy */
		bool inspect = c->verdict == WFPR_VERDICT_INSPECT && has_data_hook(e, c->ru);
		uint8_t *into = h->buf + h->len;
		size_t room = h->cap - h->len;
		if (inspect && room > e->opts.buffer_size)
			room = e->opts.buffer_size;
		ssize_t n = read(src, into, room);
		if (n < 0) {
			h->ready = errno == EINTR;
			return errno == EAGAIN || errno == EINTR;
		}
		if (n == 0) {
			h->eof = true;
			bool ok = true;
			if (inspect && h->held_len) /* the end: the rule sees the held bytes once more */
				apply(c, h, direction, h->held, h->held_len, AT_END, closed_by_rule, &ok);
			return ok;
		}
		/* a short read emptied the socket: edge-triggered, the next byte brings an event */
		h->ready = (size_t)n == room || h->hup;
		*moved += (size_t)n;
		if (!inspect) {
			h->len += (size_t)n;
			continue;
		}
		record_chunk(c, direction, into, (size_t)n);
		bool ok = true;
		if (h->held_len && h->held_len + (size_t)n > WFPR_RULES_HOLD_MAX) {
			/* past the cap: the held bytes get the default verdict, then these
			 * are asked about (moved aside first: the held bytes go where they lie) */
			memcpy(e->scratch, into, (size_t)n);
			into = e->scratch;
			if (!apply(c, h, direction, h->held, h->held_len, PAST_CAP, closed_by_rule, &ok))
				return ok;
		}
		if (h->held_len) { /* need_more: these bytes join the held ones */
			hold(h, into, (size_t)n);
			if (h->held_len < h->held_need)
				continue; /* not yet as many as the rule asked for */
			if (!apply(c, h, direction, h->held, h->held_len, NULL, closed_by_rule, &ok))
				return ok;
			continue;
		}
		if (!apply(c, h, direction, into, (size_t)n, NULL, closed_by_rule, &ok))
			return ok;
	}
	return true;
}

/* Write h to dst, adding what it wrote to *moved; pass the half-close on
 * once it is empty (unless the other direction is done too: the close
 * that follows sends the FIN, dst having nothing left unread). A buffer a
 * long replacement grew goes back to its normal size once empty. False on
 * a reset. */
static bool drain(int dst, half *h, const half *other, size_t normal_cap, size_t *moved)
{
	size_t off = 0;
	/* the source has ended: these are the last bytes, and the FIN (the
	 * shutdown or the close below) goes out in their segment, so the peer
	 * wakes once */
	int more = h->eof ? MSG_MORE : 0;
	while (off < h->len) {
		ssize_t n = send(dst, h->buf + off, h->len - off, MSG_NOSIGNAL | more);
		if (n < 0) {
			if (errno == EAGAIN || errno == EINTR)
				break;
			return false;
		}
		off += (size_t)n;
	}
	h->total += off;
	*moved += off;
	memmove(h->buf, h->buf + off, h->len - off);
	h->len -= off;
	if (h->len == 0 && h->cap > normal_cap)
		buf_resize(h, normal_cap);
	if (h->eof && h->len == 0 && !h->shut) {
		if (!other->shut)
			shutdown(dst, SHUT_WR);
		h->shut = true;
	}
	return true;
}

static void pump(conn *c)
{
	bool closed_by_rule = false;
	/* edge-triggered: keep going until nothing moves, or the sockets stall */
	for (;;) {
		size_t moved = 0;
		bool ok = fill(c, c->client, &c->up, 0, &closed_by_rule, &moved) && !closed_by_rule &&
		          drain(c->upstream, &c->up, &c->down, c->engine->opts.buffer_size, &moved) &&
		          fill(c, c->upstream, &c->down, 1, &closed_by_rule, &moved) && !closed_by_rule &&
		          drain(c->client, &c->down, &c->up, c->engine->opts.buffer_size, &moved);
		if (closed_by_rule) {
			close_conn(c, true, NULL);
			return;
		}
		if (!ok) {
			close_conn(c, true, "connection reset");
			return;
		}
		if (c->up.shut && c->down.shut) {
			close_conn(c, false, NULL);
			return;
		}
		if (moved == 0)
			return; /* nothing moved: wait for the next event */
		clock_gettime(CLOCK_MONOTONIC, &c->last);
	}
}

/* What an event says of the socket that h reads from. */
static void source_event(half *h, uint32_t events)
{
	if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
		h->ready = true;
	if (events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR))
		h->hup = true;
}

#define SHED_MS 100
#define SWEEP_MS 50 /* idle flows and connections are looked for at most this often */

/* accept failed for want of descriptors or memory: a listener left armed
 * would wake the loop at once, again and again (100% CPU, nobody served).
 * It rests SHED_MS, or until a connection closes; the clients wait in the
 * backlog meanwhile. Said in the log once per episode. */
static void shed_load(wfpr_engine *e, int err)
{
	clock_gettime(CLOCK_MONOTONIC, &e->shed_since);
	if (e->shedding)
		return;
	e->shedding = true;
	watch_fd(e, EPOLL_CTL_MOD, e->listen_fd, 0, &e->w_listener);
	char why[160];
	snprintf(why, sizeof(why), "cannot accept: %s; new connections wait in the backlog until some close",
	         strerror(err));
	wfpr_rule_conn info = {.version = WFPR_RULE_CONN_VERSION, .protocol = IPPROTO_TCP};
	log_line(e, &info, "tcp", NULL, 0, 0, 0, "shed", NULL, why, NULL, NULL, NULL, 0);
}

static void resume_accepting(wfpr_engine *e, bool a_connection_closed)
{
	if (!e->shedding || (!a_connection_closed && elapsed_ms(&e->shed_since) < SHED_MS))
		return;
	e->shedding = false;
	watch_fd(e, EPOLL_CTL_MOD, e->listen_fd, EPOLLIN, &e->w_listener);
}

static bool out_of_resources(int err)
{
	return err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM;
}

static void accept_all(wfpr_engine *e)
{
	for (;;) {
		/* the connection's upstream socket first: a connection is accepted
		 * only when it can be relayed, never to be reset later */
		if (e->spare < 0 && (e->spare = wfpr_socket(e->address.ss_family, SOCK_STREAM | SOCK_NONBLOCK, 0, 0)) < 0) {
			if (out_of_resources(errno))
				shed_load(e, errno);
			return;
		}
		struct sockaddr_storage peer;
		socklen_t peer_len = sizeof(peer);
		int fd = accept4(e->listen_fd, (struct sockaddr *)&peer, &peer_len, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0) {
			int err = errno;
			if (out_of_resources(err))
				shed_load(e, err);
			return; /* the spare waits for the next connection */
		}
		int reserve = e->spare;
		e->spare = -1;
		conn *c = calloc(1, sizeof(*c));
		size_t cap = e->opts.buffer_size < START_BUFFER ? e->opts.buffer_size : START_BUFFER;
		if (!c || !(c->up.buf = malloc(cap)) || !(c->down.buf = malloc(cap)) ||
		    !(c->record = malloc(FIRST_RECORD_TRY))) {
			if (c) {
				free(c->up.buf);
				free(c->down.buf);
				free(c->record);
			}
			free(c);
			close(fd);
			close(reserve);
			e->stats.failed++;
			continue;
		}
		c->engine = e;
		c->client = fd;
		c->upstream = -1;
		c->reserve = reserve;
		c->up.cap = c->down.cap = cap;
		c->up.ready = c->down.ready = true;
		c->record_cap = FIRST_RECORD_TRY;
		c->info.version = WFPR_RULE_CONN_VERSION;
		c->info.id = next_id();
		c->info.protocol = IPPROTO_TCP;
		c->info.client = peer;
		c->w_client = (watch){KIND_CLIENT, c, NULL};
		c->w_upstream = (watch){KIND_UPSTREAM, c, NULL};
		c->w_query = (watch){KIND_QUERY, c, NULL};
		clock_gettime(CLOCK_MONOTONIC, &c->started);
		c->last = c->started;
		c->next = e->conns;
		if (e->conns)
			e->conns->prev = c;
		e->conns = c;
		e->stats.accepted++;
		e->stats.active++;
		query_records(c);
	}
}

/* ---- UDP flows ---- */

static void close_flow(wfpr_engine *e, flow *f, const char *error)
{
	log_line(e, &f->info, "udp", f->record, f->record_len, f->up, f->down, error ? "error" : "close",
	         f->blocked ? "block" : verdict_name(f->verdict), error, NULL, NULL, f->notes, f->n_notes);
	wfpr_rule_close_stats st = {f->up, f->down, (uint64_t)elapsed_ms(&f->started)};
	hook_close(e, f->ru, &f->info, &st);
	rules_leave(e, f->ru);
	f->ru = NULL;
	e->stats.bytes_up += f->up;
	e->stats.bytes_down += f->down;
	if (f->upstream >= 0)
		wfpr_closesocket(f->upstream);
	wfpr__addrmap_remove(&e->flow_of, &f->client);
	RETIRE(e->flows, e->dead_flows, f);
}

/* Through on_datagram for inspected flows: false to send nothing. */
static bool datagram_rule(wfpr_engine *e, flow *f, int direction, const uint8_t **data, size_t *len)
{
	if (f->verdict != WFPR_VERDICT_INSPECT || !has_data_hook(e, f->ru))
		return true;
	const void *out;
	size_t out_len;
	wfpr_data_verdict v = hook_data(e, f->ru, &f->info, direction, true, *data, *len, &out, &out_len);
	if (v != WFPR_DATA_PASS)
		log_verdict(e, f->ru, &f->info, "udp", f->record, f->record_len, f->up, f->down, "on_datagram",
		            v, NULL);
	switch (v) {
	case WFPR_DATA_REPLACE:
		*data = out;
		*len = out_len;
		return true;
	case WFPR_DATA_PASS:
		return true;
	case WFPR_DATA_CLOSE:
		close_flow(e, f, NULL);
		return false;
	case WFPR_DATA_DROP:
	case WFPR_DATA_NEED_MORE: /* (only a C hook could say it of a datagram: nothing to wait for) */
		break;
	}
	return false;
}

/* Connect the flow's socket toward the original destination, with the
 * flow's records SET and the rule's annotations: the backend takes it on to
 * the next proxy or to the destination, and the kernel then takes replies
 * from there only, so that a datagram any other socket sends to this port
 * never reaches the client as the destination's. A flow that cannot go on
 * keeps no socket: its datagrams are dropped, and the log says why. */
static void connect_flow(wfpr_engine *e, flow *f)
{
	const struct sockaddr_storage *dst = &f->context[0];
	socklen_t dst_len = sockaddr_len(dst);
	char why[96];
	int err = wfpr_setsockopt(f->upstream, IPPROTO_IP, WFPR_IP_WFP_REDIRECT_RECORDS, f->record,
	                          (socklen_t)f->record_len) != 0 ? wfpr_get_last_error() : 0;
	if (!err && f->notes && (err = annotate(f->upstream, f->notes, f->n_notes)) != 0) {
		log_line(e, &f->info, "udp", f->record, f->record_len, 0, 0, "error", NULL,
		         annotate_error(why, sizeof(why), err), NULL, NULL, f->notes, f->n_notes);
		err = 0; /* the flow goes on without them */
	}
	if (!err && wfpr_connect(f->upstream, (const struct sockaddr *)dst, dst_len) != 0)
		err = wfpr_get_last_error();
	if (!err)
		return;
	const char *name = wfpr_err_name(err);
	snprintf(why, sizeof(why), "cannot send on: %s", name ? name : "error");
	log_line(e, &f->info, "udp", f->record, f->record_len, 0, 0, "error", NULL, why, NULL, NULL, f->notes, f->n_notes);
	e->stats.failed++;
	wfpr_closesocket(f->upstream);
	f->upstream = -1;
}

static flow *new_flow(wfpr_engine *e, const struct sockaddr_storage *client, const struct cmsghdr *records,
                      const struct cmsghdr *context)
{
	size_t rlen = records->cmsg_len - CMSG_LEN(0), clen = context->cmsg_len - CMSG_LEN(0);
	flow *f = calloc(1, sizeof(*f));
	if (!f || clen != sizeof(f->context) || !(f->record = malloc(rlen))) {
		if (f)
			free(f->record);
		free(f);
		return NULL;
	}
	memcpy(f->record, CMSG_DATA(records), rlen);
	f->record_len = rlen;
	memcpy(f->context, CMSG_DATA(context), clen);
	f->client = *client;
	f->w = (watch){KIND_FLOW, NULL, f};
	f->info.version = WFPR_RULE_CONN_VERSION;
	f->info.id = next_id();
	f->info.protocol = IPPROTO_UDP;
	f->info.client = *client;
	f->info.original_dst = f->context[0];
	f->info.records = f->record;
	f->info.records_len = f->record_len;
	redirect_state(e, &f->info);
	process_of(&f->info);
	clock_gettime(CLOCK_MONOTONIC, &f->started);
	f->upstream = wfpr_socket(f->context[0].ss_family, SOCK_DGRAM | SOCK_NONBLOCK, 0, 0);
	if (f->upstream < 0 || watch_fd(e, EPOLL_CTL_ADD, f->upstream, EPOLLIN, &f->w) < 0 ||
	    wfpr__addrmap_put(&e->flow_of, client, f) != 0) {
		if (f->upstream >= 0)
			wfpr_closesocket(f->upstream);
		free(f->record);
		free(f);
		return NULL;
	}
	f->next = e->flows;
	if (e->flows)
		e->flows->prev = f;
	e->flows = f;
	e->stats.flows++;
	f->ru = rules_take(e);
	f->verdict = hook_connect(e, f->ru, &f->info);
	f->blocked = f->verdict == WFPR_VERDICT_BLOCK;
	if (f->blocked)
		e->stats.blocked++;
	if (!f->blocked) {
		f->notes = take_annotations(e, f->ru, &f->n_notes);
		connect_flow(e, f);
	}
	log_line(e, &f->info, "udp", f->record, f->record_len, 0, 0, "connect", verdict_name(f->verdict), NULL,
	         f->blocked ? "on_connect" : NULL, f->blocked ? rule_reason(e, f->ru) : NULL, f->notes, f->n_notes);
	return f;
}

/* Toward the original destination, on the flow's connected socket. */
static void forward_up(wfpr_engine *e, flow *f, const uint8_t *data, size_t len)
{
	if (f->upstream < 0 || send(f->upstream, data, len, 0) < 0)
		return;
	f->up += len;
	e->stats.datagrams_up++;
}

/* A datagram that starts no flow and belongs to none: dropped, and said in
 * the log, at most once a second (with how many since the last line). */
static void unflowed(wfpr_engine *e, const struct sockaddr_storage *from, bool had_records)
{
	e->unflowed++;
	if (e->unflowed_logged.tv_sec && elapsed_ms(&e->unflowed_logged) < 1000)
		return;
	char why[160];
	snprintf(why, sizeof(why), "%s; %llu datagram(s) dropped since the last such line",
	         had_records ? "no resources for a new flow" : "not the first datagram of a flow this proxy knows",
	         (unsigned long long)e->unflowed);
	wfpr_rule_conn info = {.version = WFPR_RULE_CONN_VERSION, .protocol = IPPROTO_UDP, .client = *from};
	log_line(e, &info, "udp", NULL, 0, 0, 0, "drop", NULL, why, NULL, NULL, NULL, 0);
	e->unflowed = 0;
	clock_gettime(CLOCK_MONOTONIC, &e->unflowed_logged);
}

static void udp_receive(wfpr_engine *e)
{
	uint8_t *data = e->datagram;
	uint8_t control[CMSG_SPACE(WFPR_RECORD_MAX_SIZE) + CMSG_SPACE(WFPR_CONTEXT_MAX_SIZE)];
	for (;;) {
		struct sockaddr_storage from;
		struct iovec iov = {.iov_base = data, .iov_len = MAX_DATAGRAM};
		struct msghdr msg = {.msg_name = &from, .msg_namelen = sizeof(from), .msg_iov = &iov, .msg_iovlen = 1,
		                     .msg_control = control, .msg_controllen = sizeof(control)};
		ssize_t n = wfpr_recvmsg(e->udp_fd, &msg, 0);
		if (n < 0)
			return;
		flow *f = wfpr__addrmap_get(&e->flow_of, &from);
		const struct cmsghdr *records = NULL, *context = NULL;
		for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
			if (c->cmsg_level == IPPROTO_IP && c->cmsg_type == WFPR_IP_WFP_REDIRECT_RECORDS)
				records = c;
			if (c->cmsg_level == IPPROTO_IP && c->cmsg_type == WFPR_IP_WFP_REDIRECT_CONTEXT)
				context = c;
		}
		if (f && records) {
			/* the first datagram of a new flow from the same address: the
			 * sender's idle flow ended, or another socket has its port now */
			close_flow(e, f, NULL);
			f = NULL;
		}
		if (!f && (!records || !context || !(f = new_flow(e, &from, records, context)))) {
			e->stats.failed++;
			unflowed(e, &from, records && context);
			continue;
		}
		clock_gettime(CLOCK_MONOTONIC, &f->last);
		const uint8_t *out = data;
		size_t len = (size_t)n;
		if (f->blocked || !datagram_rule(e, f, 0, &out, &len))
			continue;
		forward_up(e, f, out, len);
	}
}

/* Replies back to f's client. They carry no records, so where no
 * on_datagram rule reads them they are taken and sent on REPLY_BATCH to a
 * system call (recvmmsg, sendmmsg); a rule sees each on its own. */
static void flow_receive(wfpr_engine *e, flow *f)
{
	bool ruled = f->verdict == WFPR_VERDICT_INSPECT && has_data_hook(e, f->ru);
	socklen_t client_len = sockaddr_len(&f->client);
	for (;;) {
		struct mmsghdr m[REPLY_BATCH];
		struct iovec iov[REPLY_BATCH];
		unsigned int want = ruled ? 1 : REPLY_BATCH;
		for (unsigned int i = 0; i < want; i++) {
			iov[i] = (struct iovec){e->datagram + (size_t)i * MAX_DATAGRAM, MAX_DATAGRAM};
			m[i].msg_hdr = (struct msghdr){.msg_iov = &iov[i], .msg_iovlen = 1};
		}
		int n = recvmmsg(f->upstream, m, want, MSG_DONTWAIT, NULL);
		if (n <= 0)
			return;
		clock_gettime(CLOCK_MONOTONIC, &f->last);
		int pass = 0;
		for (int i = 0; i < n; i++) {
			const uint8_t *out = iov[i].iov_base;
			size_t len = m[i].msg_len;
			if (ruled && !datagram_rule(e, f, 1, &out, &len)) {
				if (f->closed)
					return;
				continue;
			}
			iov[pass] = (struct iovec){(void *)out, len};
			m[pass].msg_hdr = (struct msghdr){.msg_name = &f->client, .msg_namelen = client_len,
			                                  .msg_iov = &iov[pass], .msg_iovlen = 1};
			f->down += len;
			e->stats.datagrams_down++;
			pass++;
		}
		if (pass)
			sendmmsg(e->udp_fd, m, (unsigned int)pass, 0);
	}
}

/* End the flows, and (with tcp_idle_ms) the connections, idle too long.
 * A walk of them all, so at most every SWEEP_MS, not after every batch of
 * events: with thousands of flows that walk cost more than the datagrams. */
static void sweep_idle(wfpr_engine *e)
{
	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC, &now);
	if (e->swept.tv_sec && ms_between(&e->swept, &now) < SWEEP_MS)
		return;
	e->swept = now;
	int64_t idle = e->opts.udp_idle_ms ? e->opts.udp_idle_ms : DEFAULT_UDP_IDLE_MS;
	for (flow *f = e->flows, *next; f; f = next) {
		next = f->next;
		if (ms_between(&f->last, &now) >= idle) {
			e->stats.flows_expired++;
			close_flow(e, f, NULL);
		}
	}
	for (conn *c = e->opts.tcp_idle_ms ? e->conns : NULL, *next; c; c = next) {
		next = c->next;
		if (ms_between(&c->last, &now) >= (int64_t)e->opts.tcp_idle_ms) {
			e->stats.timed_out++;
			close_conn(c, true, "idle timeout");
		}
	}
}

static void bury_dead_flows(wfpr_engine *e)
{
	for (flow *f = e->dead_flows, *next; f; f = next) {
		next = f->next;
		free(f->record);
		free(f->notes);
		free(f);
	}
	e->dead_flows = NULL;
}

int wfpr_engine_new(wfpr_engine **out, const wfpr_engine_options *opts)
{
	wfpr_engine_options defaults = WFPR_ENGINE_OPTIONS_INIT;
	if (!out)
		return WFPR_WSAEFAULT;
	*out = NULL;
	if (!opts)
		opts = &defaults;
	if (opts->version != 1 && opts->version != WFPR_ENGINE_OPTIONS_VERSION)
		return WFPR_WSAEINVAL;
	wfpr_engine *e = calloc(1, sizeof(*e));
	if (!e)
		return WFPR_WSAENOBUFS;
	e->epoll_fd = e->listen_fd = e->stop_fd = e->udp_fd = e->reload_fd = e->spare = -1;
	/* a version-1 caller's options end before record_dir */
	memcpy(&e->opts, opts, opts->version == 1 ? offsetof(wfpr_engine_options, record_dir) : sizeof(*opts));
	pthread_mutex_init(&e->pending_lock, NULL);
	e->current = calloc(1, sizeof(*e->current)); /* opts.rules: the caller's, never released by the engine */
	if (!e->current) {
		free(e);
		return WFPR_WSAENOBUFS;
	}
	e->current->rules = opts->rules;
	if (!e->opts.buffer_size)
		e->opts.buffer_size = DEFAULT_BUFFER;
	e->name = strdup(opts->name ? opts->name : "proxy");
	e->scratch = malloc(e->opts.buffer_size);
	if (opts->log_fd >= 0) {
		/* a reader that stops (a FIFO) must not stall the relay: the lines wait in the backlog */
		int fl = fcntl(opts->log_fd, F_GETFL);
		if (fl >= 0 && !(fl & O_NONBLOCK))
			fcntl(opts->log_fd, F_SETFL, fl | O_NONBLOCK);
	}
	e->epoll_fd = epoll_create1(EPOLL_CLOEXEC);
	e->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	e->reload_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	struct sockaddr_storage addr;
	if (opts->listen_address) {
		addr = *opts->listen_address;
	} else {
		struct sockaddr_in *sin = (struct sockaddr_in *)&addr;
		memset(&addr, 0, sizeof(addr));
		sin->sin_family = AF_INET;
		sin->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	}
	socklen_t len = sockaddr_len(&addr);
	e->listen_fd = socket(addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	int one = 1;
	int rc = 0;
	if (!e->name || !e->scratch) {
		rc = WFPR_WSAENOBUFS;
	} else if (e->epoll_fd < 0 || e->stop_fd < 0 || e->reload_fd < 0 || e->listen_fd < 0 ||
	           setsockopt(e->listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
	           (opts->reuse_port && setsockopt(e->listen_fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0) ||
	           bind(e->listen_fd, (struct sockaddr *)&addr, len) < 0 || listen(e->listen_fd, 1024) < 0) {
		rc = errno ? wfpr_err_from_errno(errno) : WFPR_WSAEINVAL;
	} else {
		len = sizeof(e->address);
		getsockname(e->listen_fd, (struct sockaddr *)&e->address, &len);
		e->w_listener = (watch){KIND_LISTENER, NULL, NULL};
		e->w_stop = (watch){KIND_STOP, NULL, NULL};
		e->w_reload = (watch){KIND_RELOAD, NULL, NULL};
		if (watch_fd(e, EPOLL_CTL_ADD, e->listen_fd, EPOLLIN, &e->w_listener) < 0 ||
		    watch_fd(e, EPOLL_CTL_ADD, e->stop_fd, EPOLLIN, &e->w_stop) < 0 ||
		    watch_fd(e, EPOLL_CTL_ADD, e->reload_fd, EPOLLIN, &e->w_reload) < 0)
			rc = wfpr_err_from_errno(errno);
	}
	if (rc == 0 && opts->udp) {
		/* the same address and port, for UDP; ask for the context with each flow's records */
		int on = 1;
		e->w_udp = (watch){KIND_UDP, NULL, NULL};
		e->udp_fd = socket(e->address.ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		e->datagram = malloc((size_t)REPLY_BATCH * MAX_DATAGRAM);
		socklen_t alen = sockaddr_len(&e->address);
		if (!e->datagram || wfpr__addrmap_init(&e->flow_of) != 0) {
			rc = WFPR_WSAENOBUFS;
		} else if (e->udp_fd < 0 ||
		           (opts->reuse_port && setsockopt(e->udp_fd, SOL_SOCKET, SO_REUSEPORT, &on, sizeof(on)) < 0) ||
		           bind(e->udp_fd, (struct sockaddr *)&e->address, alen) < 0 ||
		           wfpr_setsockopt(e->udp_fd, IPPROTO_IP, WFPR_IP_WFP_REDIRECT_CONTEXT, &on, sizeof(on)) != 0 ||
		           watch_fd(e, EPOLL_CTL_ADD, e->udp_fd, EPOLLIN, &e->w_udp) < 0) {
			rc = errno ? wfpr_err_from_errno(errno) : WFPR_WSAEADDRINUSE;
		}
	}
	if (rc != 0) {
		wfpr_engine_free(e);
		return rc;
	}
	*out = e;
	return 0;
}

int wfpr_engine_address(struct sockaddr_storage *out, const wfpr_engine *e)
{
	if (!out || !e)
		return WFPR_WSAEFAULT;
	*out = e->address;
	return 0;
}

/* Asked to stop, the loop first settles what was already made: the
 * connections waiting in the backlog are accepted, and every accepted one
 * is let reach its verdict (its record comes, the rule is asked, the log
 * says so), for STOP_SETTLE_MS at most. A program that connects and exits
 * at once (wfpr run then stops its proxies) still has its connection in
 * the log and the summary. Relayed connections are then closed. */
#define STOP_SETTLE_MS 1000
#define STOP_POLL_MS 10

static bool settled(wfpr_engine *e)
{
	if (elapsed_ms(&e->stop_asked) >= STOP_SETTLE_MS)
		return true;
	for (conn *c = e->conns; c; c = c->next)
		if (c->phase == PHASE_QUERY)
			return false;
	return true;
}

/* Close every connection and flow (they are logged). */
static void close_all(wfpr_engine *e)
{
	while (e->conns)
		close_conn(e->conns, false, NULL);
	while (e->flows)
		close_flow(e, e->flows, NULL);
	bury_dead(e);
	bury_dead_flows(e);
}

int wfpr_engine_run(wfpr_engine *e)
{
	if (!e)
		return WFPR_WSAEFAULT;
	struct epoll_event events[128];
	for (;;) {
		if (e->stopping && settled(e)) {
			close_all(e);
			return 0;
		}
		/* with UDP flows open, wake now and then to end the idle ones */
		bool tcp_idle = e->opts.tcp_idle_ms && e->conns;
		int n = epoll_wait(e->epoll_fd, events, 128,
		                   e->stopping ? STOP_POLL_MS : e->shedding ? SHED_MS : e->flows ? 100 : tcp_idle ? 250 : -1);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return wfpr_err_from_errno(errno);
		}
		for (int i = 0; i < n; i++) {
			watch *w = events[i].data.ptr;
			if ((w->conn && w->conn->closed) || (w->flow && w->flow->closed))
				continue;
			switch (w->kind) {
			case KIND_STOP:
				if (!e->stopping) {
					uint64_t count;
					if (read(e->stop_fd, &count, sizeof(count)) < 0) {
						/* already read: the flag below is what counts */
					}
					e->stopping = true; /* the listener stays watched: the backlog is taken */
					clock_gettime(CLOCK_MONOTONIC, &e->stop_asked);
				}
				break;
			case KIND_RELOAD:
				rules_switch(e);
				break;
			case KIND_UDP:
				udp_receive(e);
				break;
			case KIND_FLOW:
				flow_receive(e, w->flow);
				break;
			case KIND_LISTENER:
				accept_all(e);
				break;
			case KIND_QUERY:
				query_completed(w->conn);
				break;
			case KIND_UPSTREAM:
			case KIND_CLIENT:
				source_event(w->kind == KIND_CLIENT ? &w->conn->up : &w->conn->down, events[i].events);
				if (w->conn->phase == PHASE_CONNECT && w->kind == KIND_UPSTREAM)
					connect_progress(w->conn);
				else if (w->conn->phase == PHASE_RELAY)
					pump(w->conn);
				break;
			}
		}
		sweep_idle(e);
		resume_accepting(e, e->dead != NULL);
		bury_dead(e);
		bury_dead_flows(e);
	}
}

void wfpr_engine_stop(wfpr_engine *e)
{
	uint64_t one = 1;
	if (e && write(e->stop_fd, &one, sizeof(one)) < 0) {
		/* the counter is already non-zero: the loop wakes either way */
	}
}

int wfpr_engine_replace_rules(wfpr_engine *e, wfpr_rules *rules, wfpr_engine_rules_release_fn release, void *user)
{
	if (!e || !rules)
		return WFPR_WSAEFAULT;
	if (e->opts.hooks)
		return WFPR_WSAEINVAL; /* C hooks, not rules */
	rules_use *next = calloc(1, sizeof(*next));
	if (!next)
		return WFPR_WSAENOBUFS;
	*next = (rules_use){.rules = rules, .release = release, .release_user = user};
	pthread_mutex_lock(&e->pending_lock);
	rules_use *unused = e->pending; /* replaced before the loop took it: never used */
	e->pending = next;
	pthread_mutex_unlock(&e->pending_lock);
	if (unused)
		rules_drop(unused);
	uint64_t one = 1;
	if (write(e->reload_fd, &one, sizeof(one)) < 0) {
		/* the counter is already non-zero: the loop wakes either way */
	}
	return 0;
}

int wfpr_engine_get_stats(wfpr_engine_stats *out, const wfpr_engine *e)
{
	if (!out || !e)
		return WFPR_WSAEFAULT;
	*out = e->stats;
	return 0;
}

void wfpr_engine_free(wfpr_engine *e)
{
	if (!e)
		return;
	close_all(e);
	/* every connection is gone: the rules go back to those who gave them */
	while (e->retired) {
		rules_use *ru = e->retired;
		e->retired = ru->next;
		rules_drop(ru);
	}
	if (e->current)
		rules_drop(e->current);
	if (e->pending)
		rules_drop(e->pending);
	pthread_mutex_destroy(&e->pending_lock);
	if (e->reload_fd >= 0)
		close(e->reload_fd);
	if (e->udp_fd >= 0)
		close(e->udp_fd);
	if (e->listen_fd >= 0)
		close(e->listen_fd);
	if (e->spare >= 0)
		close(e->spare);
	if (e->stop_fd >= 0)
		close(e->stop_fd);
	if (e->epoll_fd >= 0)
		close(e->epoll_fd);
	if (e->log.len)
		log_flush(e); /* what a slow reader can still take */
	for (size_t i = 0; i < e->log.len; i++)
		e->log.dropped += e->log.buf[i] == '\n';
	if (e->log.dropped)
		fprintf(stderr, "wfpr proxy %s: %llu log line(s) dropped\n", e->name, (unsigned long long)e->log.dropped);
	free(e->log.buf);
	free(e->scratch);
	free(e->datagram);
	if (e->flow_of.buckets)
		wfpr__addrmap_free(&e->flow_of);
	free(e->name);
	free(e);
}
