#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "bytes.h"
#include "record.h"
#include "wfpr/error.h"

#include "record_wire.h"

#define RECORD_HEADER_SIZE WFPR__WIRE_HEADER_SIZE
#define TYPE_NONCRITICAL WFPR__WIRE_NONCRITICAL
#define TOP_HOP WFPR__WIRE_HOP
#define ADDR4_SIZE WFPR__WIRE_ADDR_SIZE(4)
#define ADDR6_SIZE WFPR__WIRE_ADDR_SIZE(16)

enum hop_attr {
	HOP_REDIRECTOR = WFPR__WIRE_REDIRECTOR,
	HOP_HANDLE = WFPR__WIRE_HANDLE,
	HOP_PID = WFPR__WIRE_PID,
	HOP_PROTOCOL = WFPR__WIRE_PROTOCOL,
	HOP_ORIGINAL_REMOTE = WFPR__WIRE_ORIGINAL_REMOTE,
	HOP_ORIGINAL_LOCAL = WFPR__WIRE_ORIGINAL_LOCAL,
	HOP_TARGET = WFPR__WIRE_TARGET,
	HOP_TIME = WFPR__WIRE_TIME,
	HOP_TOKEN = WFPR__WIRE_TOKEN,
	HOP_ATTR_MAX = WFPR__WIRE_HOP_ATTR_MAX
};

_Static_assert(WFPR__WIRE_ID_SIZE == WFPR_REDIRECTOR_ID_SIZE && WFPR__WIRE_TOKEN_SIZE == WFPR_TOKEN_SIZE &&
                   WFPR__WIRE_NOTES_MAX == WFPR_ANNOTATIONS_SIZE_MAX,
               "the wire's sizes are the API's");

struct attr_policy {
	uint16_t min_len, max_len;
};

/* netlink-style policy: every listed attribute is required, once. */
static const struct attr_policy hop_policy[HOP_ATTR_MAX + 1] = {
	[HOP_REDIRECTOR] = {WFPR_REDIRECTOR_ID_SIZE, WFPR_REDIRECTOR_ID_SIZE},
	[HOP_HANDLE] = {8, 8},
	[HOP_PID] = {4, 4},
	[HOP_PROTOCOL] = {1, 1},
	[HOP_ORIGINAL_REMOTE] = {ADDR4_SIZE, ADDR6_SIZE},
	[HOP_ORIGINAL_LOCAL] = {ADDR4_SIZE, ADDR6_SIZE},
	[HOP_TARGET] = {ADDR4_SIZE, ADDR6_SIZE},
	[HOP_TIME] = {8, 8},
	[HOP_TOKEN] = {WFPR_TOKEN_SIZE, WFPR_TOKEN_SIZE},
};

static bool parse_addr(cursor *c, struct sockaddr_storage *out)
{
	uint8_t family;
	uint16_t port;

	/* out is already zeroed with the rest of its hop */
	if (!cursor_get_u8(c, &family) || !cursor_get_u16(c, &port))
		return false;
	if (family == 4 && c->len == 4) {
		struct sockaddr_in *sin = (struct sockaddr_in *)out;
		sin->sin_family = AF_INET;
		sin->sin_port = htons(port);
		return cursor_copy_bytes(c, &sin->sin_addr, 4);
	}
	if (family == 6 && c->len == 16) {
		struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)out;
		sin6->sin6_family = AF_INET6;
		sin6->sin6_port = htons(port);
		return cursor_copy_bytes(c, &sin6->sin6_addr, 16);
	}
	return false;
}

static bool parse_attr(cursor *value, uint16_t type, wfpr_hop *hop)
{
	uint8_t u8;
	uint32_t u32;

	switch (type) {
	case HOP_REDIRECTOR: return cursor_copy_bytes(value, hop->redirector_id, WFPR_REDIRECTOR_ID_SIZE);
	case HOP_HANDLE: return cursor_get_u64(value, &hop->handle_id);
	case HOP_PID:
		if (!cursor_get_u32(value, &u32))
			return false;
		hop->proxy_pid = u32;
		return true;
	case HOP_PROTOCOL:
		if (!cursor_get_u8(value, &u8) || (u8 != IPPROTO_TCP && u8 != IPPROTO_UDP))
			return false;
		hop->protocol = u8;
		return true;
	case HOP_ORIGINAL_REMOTE: return parse_addr(value, &hop->original_remote);
	case HOP_ORIGINAL_LOCAL: return parse_addr(value, &hop->original_local);
	case HOP_TARGET: return parse_addr(value, &hop->target);
	case HOP_TIME: return cursor_get_u64(value, &hop->time_ns);
	case HOP_TOKEN: return cursor_copy_bytes(value, hop->token, WFPR_TOKEN_SIZE);
	}
	return false;
}

/* PROCESS: another version is skipped, as an unknown non-critical type is. */
static bool parse_process(cursor *value, wfpr_process *out)
{
	uint8_t version;
	const uint8_t *comm, *exe;
	if (value->len < WFPR__WIRE_PROCESS_SIZE(0) || !cursor_get_u8(value, &version))
		return false;
	if (version != WFPR__WIRE_PROCESS_VERSION)
		return true;
	size_t exe_len = value->len - (WFPR__WIRE_PROCESS_SIZE(0) - 1);
	if (exe_len > WFPR__WIRE_EXE_MAX || !cursor_get_u32(value, &out->pid) || !cursor_get_u32(value, &out->uid) ||
	    !cursor_get_bytes(value, &comm, WFPR__WIRE_COMM_SIZE) || !cursor_get_bytes(value, &exe, exe_len))
		return false;
	memcpy(out->name, comm, WFPR__WIRE_COMM_SIZE);
	out->name[strnlen(out->name, WFPR__WIRE_COMM_SIZE)] = '\0';
	memcpy(out->exe, exe, exe_len);
	out->exe[exe_len] = '\0';
	return strlen(out->exe) == exe_len; /* a path with a NUL inside is not one */
}

static bool key_char(char ch)
{
	return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '_' ||
	       ch == '.' || ch == '-';
}

static bool annotation_valid(const char *key, size_t key_len, const char *value, size_t value_len)
{
	if (key_len == 0 || key_len > WFPR_ANNOTATION_KEY_MAX || value_len > WFPR_ANNOTATION_VALUE_MAX)
		return false;
	for (size_t i = 0; i < key_len; i++)
		if (!key_char(key[i]))
			return false;
	for (size_t i = 0; i < value_len; i++)
		if (value[i] < 0x20 || value[i] > 0x7e)
			return false;
	return true;
}

/* NOTES into hop's annotations: every pair valid, keys distinct. */
static bool parse_notes(cursor *value, wfpr_hop *hop)
{
	if (value->len == 0 || value->len > WFPR__WIRE_NOTES_MAX)
		return false;
	hop->annotation_count = 0;
	while (value->len > 0) {
		uint8_t klen, vlen;
		const uint8_t *k, *v;
		if (hop->annotation_count == WFPR_ANNOTATIONS_MAX || !cursor_get_u8(value, &klen) ||
		    !cursor_get_bytes(value, &k, klen) || !cursor_get_u8(value, &vlen) || !cursor_get_bytes(value, &v, vlen) ||
		    !annotation_valid((const char *)k, klen, (const char *)v, vlen))
			return false;
		for (size_t i = 0; i < hop->annotation_count; i++)
			if (strlen(hop->annotations[i].key) == klen && memcmp(hop->annotations[i].key, k, klen) == 0)
				return false;
		wfpr_annotation *a = &hop->annotations[hop->annotation_count++];
		memcpy(a->key, k, klen);
		a->key[klen] = '\0';
		memcpy(a->value, v, vlen);
		a->value[vlen] = '\0';
	}
	return true;
}

int wfpr__notes_put(uint8_t *notes, size_t *len, const char *key, const char *value)
{
	if (!notes || !len || !key || !value)
		return WFPR_WSAEFAULT;
	size_t klen = strlen(key), vlen = strlen(value);
	if (*len > WFPR__WIRE_NOTES_MAX || !annotation_valid(key, klen, value, vlen))
		return WFPR_WSAEINVAL;
	/* the pairs without key's, then key's new one */
	uint8_t out[WFPR__WIRE_NOTES_MAX];
	size_t n = 0, pairs = 0;
	for (size_t at = 0; at + 1 < *len;) {
		size_t kl = notes[at], vl = notes[at + 1 + kl], size = 2 + kl + vl;
		if (!(kl == klen && memcmp(notes + at + 1, key, klen) == 0)) {
			memcpy(out + n, notes + at, size);
			n += size;
			pairs++;
		}
		at += size;
	}
	if (pairs == WFPR_ANNOTATIONS_MAX || n + 2 + klen + vlen > WFPR__WIRE_NOTES_MAX)
		return WFPR_WSAEMSGSIZE;
	out[n++] = (uint8_t)klen;
	memcpy(out + n, key, klen);
	n += klen;
	out[n++] = (uint8_t)vlen;
	memcpy(out + n, value, vlen);
	n += vlen;
	memcpy(notes, out, n);
	*len = n;
	return 0;
}

size_t wfpr__notes_list(const uint8_t *notes, size_t len, wfpr_annotation *out, size_t max)
{
	wfpr_hop scratch;
	cursor c;
	if (!notes || len == 0)
		return 0;
	cursor_init(&c, notes, len);
	if (!parse_notes(&c, &scratch))
		return 0;
	size_t n = scratch.annotation_count < max ? scratch.annotation_count : max;
	memcpy(out, scratch.annotations, n * sizeof(*out));
	return n;
}

/* prev: the hop before (NULL for the first), whose annotations a NOTES here carries. */
static bool parse_hop(cursor *body, wfpr_hop *hop, wfpr_hop *prev, const uint8_t **signed_data, size_t *signed_len)
{
	uint32_t seen = 0;
	bool process_seen = false, notes_seen = false;
	const uint8_t *start = body->data;

	memset(hop, 0, sizeof(*hop));
	while (body->len > 0) {
		const uint8_t *attr_start = body->data;
		uint16_t type, len;
		cursor value;

		if (!cursor_get_u16(body, &type) || !cursor_get_u16(body, &len) ||
		    !cursor_get_sub(body, &value, len))
			return false;
		if (type == WFPR__WIRE_PROCESS) {
			if (process_seen || !parse_process(&value, &hop->process))
				return false;
			process_seen = true;
			continue;
		}
		if (type == WFPR__WIRE_NOTES) {
			if (notes_seen || !prev || !parse_notes(&value, prev))
				return false;
			notes_seen = true;
			continue;
		}
		if (type == 0 || type > HOP_ATTR_MAX) {
			if (!(type & TYPE_NONCRITICAL))
				return false;
			continue;
		}
		if (seen & (1u << type))
			return false;
		if (len < hop_policy[type].min_len || len > hop_policy[type].max_len)
			return false;
		if (!parse_attr(&value, type, hop) || value.len != 0)
			return false;
		seen |= 1u << type;
		if (type == HOP_TOKEN) {
			/* The token signs everything before it and must close the hop. */
			*signed_data = start;
			*signed_len = (size_t)(attr_start - start);
			if (body->len != 0)
				return false;
		}
	}
	uint32_t required = ((1u << (HOP_ATTR_MAX + 1)) - 1) & ~1u;
	return seen == required;
}

int wfpr__record_parse(record_view *out, const uint8_t *blob, size_t len)
{
	cursor c;
	const uint8_t *magic;
	uint8_t version, flags;
	uint16_t hop_count;
	uint32_t total_len;

	if (!out || !blob)
		return WFPR_WSAEFAULT;
	if (len < RECORD_HEADER_SIZE || len > WFPR_RECORD_MAX_SIZE)
		return WFPR_WSAEINVAL;
	cursor_init(&c, blob, len);
	if (!cursor_get_bytes(&c, &magic, WFPR__WIRE_MAGIC_SIZE) || memcmp(magic, WFPR__WIRE_MAGIC, WFPR__WIRE_MAGIC_SIZE) != 0 ||
	    !cursor_get_u8(&c, &version) || version != WFPR__WIRE_VERSION ||
	    !cursor_get_u8(&c, &flags) || flags != 0 ||
	    !cursor_get_u16(&c, &hop_count) || hop_count == 0 || hop_count > WFPR_RECORD_MAX_HOPS ||
	    !cursor_get_u32(&c, &total_len) || total_len != len)
		return WFPR_WSAEINVAL;

	out->hop_count = 0;
	while (c.len > 0) {
		uint16_t type, tlv_len;
		cursor body;

		if (!cursor_get_u16(&c, &type) || !cursor_get_u16(&c, &tlv_len) ||
		    !cursor_get_sub(&c, &body, tlv_len))
			return WFPR_WSAEINVAL;
		if (type != TOP_HOP) {
			if (!(type & TYPE_NONCRITICAL))
				return WFPR_WSAEINVAL;
			continue;
		}
		size_t i = out->hop_count;
		if (i == hop_count)
			return WFPR_WSAEINVAL;
		if (!parse_hop(&body, &out->hops[i], i ? &out->hops[i - 1] : NULL, &out->signed_data[i],
		               &out->signed_len[i]))
			return WFPR_WSAEINVAL;
		out->hop_count++;
	}
	return out->hop_count == hop_count ? 0 : WFPR_WSAEINVAL;
}

/* One SipHash context per thread (an EVP_MAC_CTX is not safe to share),
 * kept keyed: re-keying costs more than the MAC of a hop. */
typedef struct mac_state {
	EVP_MAC_CTX *ctx;
	uint8_t key[RECORD_KEY_SIZE];
	bool keyed;
} mac_state;

static pthread_key_t mac_key;
static pthread_once_t mac_once = PTHREAD_ONCE_INIT;
static EVP_MAC *siphash;

static void free_mac_state(void *p)
{
	mac_state *m = p;
	EVP_MAC_CTX_free(m->ctx);
	OPENSSL_cleanse(m->key, sizeof(m->key));
	free(m);
}

static void mac_setup(void)
{
	siphash = EVP_MAC_fetch(NULL, "SIPHASH", NULL);
	pthread_key_create(&mac_key, free_mac_state);
}

static EVP_MAC_CTX *mac_ctx(const uint8_t key[RECORD_KEY_SIZE])
{
	pthread_once(&mac_once, mac_setup);
	mac_state *m = pthread_getspecific(mac_key);
	if (!m && siphash && (m = calloc(1, sizeof(*m)))) {
		if (!(m->ctx = EVP_MAC_CTX_new(siphash))) {
			free(m);
			return NULL;
		}
		pthread_setspecific(mac_key, m);
	}
	if (!m)
		return NULL;
	if (m->keyed && memcmp(m->key, key, RECORD_KEY_SIZE) == 0)
		return EVP_MAC_init(m->ctx, NULL, 0, NULL) ? m->ctx : NULL;
	size_t size = WFPR_TOKEN_SIZE;
	OSSL_PARAM params[] = {OSSL_PARAM_construct_size_t(OSSL_MAC_PARAM_SIZE, &size), OSSL_PARAM_construct_end()};
	m->keyed = EVP_MAC_init(m->ctx, key, RECORD_KEY_SIZE, params);
	memcpy(m->key, key, RECORD_KEY_SIZE);
	return m->keyed ? m->ctx : NULL;
}

/* token = SipHash-2-4-128(key, previous token || hop index as u16 || signed bytes) */
static bool hop_token(uint8_t out[WFPR_TOKEN_SIZE], const uint8_t key[RECORD_KEY_SIZE],
                      const uint8_t prev[WFPR_TOKEN_SIZE], size_t index,
                      const uint8_t *signed_data, size_t signed_len)
{
	uint8_t buf[WFPR_TOKEN_SIZE + 2 + WFPR_RECORD_MAX_SIZE];
	size_t written = 0;
	EVP_MAC_CTX *ctx = mac_ctx(key);

	memcpy(buf, prev, WFPR_TOKEN_SIZE);
	buf[WFPR_TOKEN_SIZE] = (uint8_t)(index >> 8);
	buf[WFPR_TOKEN_SIZE + 1] = (uint8_t)index;
	memcpy(buf + WFPR_TOKEN_SIZE + 2, signed_data, signed_len);
	return ctx && EVP_MAC_update(ctx, buf, WFPR_TOKEN_SIZE + 2 + signed_len) &&
	       EVP_MAC_final(ctx, out, &written, WFPR_TOKEN_SIZE) && written == WFPR_TOKEN_SIZE;
}

bool wfpr__record_tokens_valid(const record_view *view, const uint8_t key[RECORD_KEY_SIZE])
{
	static const uint8_t zero[WFPR_TOKEN_SIZE];
	const uint8_t *prev = zero;

	for (size_t i = 0; i < view->hop_count; i++) {
		uint8_t expect[WFPR_TOKEN_SIZE];
		if (!hop_token(expect, key, prev, i, view->signed_data[i], view->signed_len[i]) ||
		    CRYPTO_memcmp(expect, view->hops[i].token, WFPR_TOKEN_SIZE) != 0)
			return false;
		prev = view->hops[i].token;
	}
	return true;
}

static bool add_addr(builder *b, uint16_t type, const struct sockaddr_storage *addr)
{
	size_t slot;
	bool ok = builder_add_u16(b, type) && builder_open_u16(b, &slot);

	if (addr->ss_family == AF_INET) {
		const struct sockaddr_in *sin = (const struct sockaddr_in *)addr;
		ok = ok && builder_add_u8(b, 4) && builder_add_u16(b, ntohs(sin->sin_port)) &&
		     builder_add_bytes(b, &sin->sin_addr, 4);
	} else if (addr->ss_family == AF_INET6) {
		const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)addr;
		ok = ok && builder_add_u8(b, 6) && builder_add_u16(b, ntohs(sin6->sin6_port)) &&
		     builder_add_bytes(b, &sin6->sin6_addr, 16);
	} else {
		return false;
	}
	return ok && wfpr__builder_close_u16(b, slot);
}

static bool add_fixed(builder *b, uint16_t type, const void *p, uint16_t n)
{
	return builder_add_u16(b, type) && builder_add_u16(b, n) && builder_add_bytes(b, p, n);
}

static bool add_u64_attr(builder *b, uint16_t type, uint64_t v)
{
	return builder_add_u16(b, type) && builder_add_u16(b, 8) && builder_add_u64(b, v);
}

/* PROCESS, when the hop knows its process (pid not 0). */
static bool add_process(builder *b, const wfpr_process *p)
{
	if (p->pid == 0)
		return true;
	uint8_t comm[WFPR__WIRE_COMM_SIZE] = {0};
	size_t exe_len = strnlen(p->exe, sizeof(p->exe));
	memcpy(comm, p->name, strnlen(p->name, WFPR__WIRE_COMM_SIZE));
	if (exe_len > WFPR__WIRE_EXE_MAX)
		exe_len = 0; /* a path too long to carry is not given */
	return builder_add_u16(b, WFPR__WIRE_PROCESS) && builder_add_u16(b, (uint16_t)WFPR__WIRE_PROCESS_SIZE(exe_len)) &&
	       builder_add_u8(b, WFPR__WIRE_PROCESS_VERSION) && builder_add_u32(b, p->pid) && builder_add_u32(b, p->uid) &&
	       builder_add_bytes(b, comm, sizeof(comm)) && builder_add_bytes(b, p->exe, exe_len);
}

/* NOTES, when the connecting socket carries annotations (checked). */
static bool add_notes(builder *b, const uint8_t *notes, size_t len)
{
	if (len == 0)
		return true;
	wfpr_hop scratch;
	cursor c;
	cursor_init(&c, notes, len);
	return parse_notes(&c, &scratch) && add_fixed(b, WFPR__WIRE_NOTES, notes, (uint16_t)len);
}

int wfpr__record_append(uint8_t **out, size_t *out_len, const record_view *prev_view, const uint8_t *prev,
                  size_t prev_len, wfpr_hop *hop, const uint8_t *notes, size_t notes_len,
                  const uint8_t key[RECORD_KEY_SIZE])
{
	static const uint8_t zero[WFPR_TOKEN_SIZE];
	const uint8_t *prev_token = zero;
	size_t hop_count = 0;
	builder b;

	if (!prev != !prev_view || (prev && (prev_len <= RECORD_HEADER_SIZE || prev_view->hop_count == 0)) ||
	    (notes_len && !prev))
		return WFPR_WSAEINVAL; /* annotations come from a proxy, which passes records on */
	if (prev) {
		hop_count = prev_view->hop_count;
		prev_token = prev_view->hops[hop_count - 1].token;
		if (hop_count >= WFPR_RECORD_MAX_HOPS)
			return WFPR_WSAELOOP;
	}

	wfpr__builder_init(&b, WFPR_RECORD_MAX_SIZE, (prev ? prev_len : RECORD_HEADER_SIZE) + 560);
	builder_add_bytes(&b, WFPR__WIRE_MAGIC, WFPR__WIRE_MAGIC_SIZE);
	builder_add_u8(&b, WFPR__WIRE_VERSION);
	builder_add_u8(&b, 0);
	builder_add_u16(&b, (uint16_t)(hop_count + 1));
	builder_add_u32(&b, 0); /* total length, back-filled */
	if (prev)
		builder_add_bytes(&b, prev + RECORD_HEADER_SIZE, prev_len - RECORD_HEADER_SIZE);

	size_t slot, attrs_start;
	uint8_t protocol = (uint8_t)hop->protocol;
	uint8_t pid[4] = {(uint8_t)(hop->proxy_pid >> 24), (uint8_t)(hop->proxy_pid >> 16),
	                  (uint8_t)(hop->proxy_pid >> 8), (uint8_t)hop->proxy_pid};
	bool ok = builder_add_u16(&b, TOP_HOP) && builder_open_u16(&b, &slot);
	attrs_start = b.len;
	ok = ok && add_fixed(&b, HOP_REDIRECTOR, hop->redirector_id, WFPR_REDIRECTOR_ID_SIZE) &&
	     add_u64_attr(&b, HOP_HANDLE, hop->handle_id) &&
	     add_fixed(&b, HOP_PID, pid, 4) &&
	     add_fixed(&b, HOP_PROTOCOL, &protocol, 1) &&
	     add_addr(&b, HOP_ORIGINAL_REMOTE, &hop->original_remote) &&
	     add_addr(&b, HOP_ORIGINAL_LOCAL, &hop->original_local) &&
	     add_addr(&b, HOP_TARGET, &hop->target) &&
	     add_u64_attr(&b, HOP_TIME, hop->time_ns) &&
	     add_process(&b, &hop->process) && add_notes(&b, notes, notes_len);
	ok = ok && hop_token(hop->token, key, prev_token, hop_count, b.data + attrs_start, b.len - attrs_start);
	ok = ok && add_fixed(&b, HOP_TOKEN, hop->token, WFPR_TOKEN_SIZE) && wfpr__builder_close_u16(&b, slot);
	if (!ok) {
		wfpr__builder_cleanup(&b);
		return WFPR_WSAEINVAL;
	}
	wfpr__builder_put_u32_at(&b, 8, (uint32_t)b.len);
	*out = wfpr__builder_finish(&b, out_len);
	return *out ? 0 : WFPR_WSAENOBUFS;
}

int wfpr_records_decode(wfpr_records **out, const void *blob, size_t len)
{
	if (!out || !blob)
		return WFPR_WSAEFAULT;
	*out = NULL;
	record_view *view = malloc(sizeof(*view));
	if (!view)
		return WFPR_WSAENOBUFS;
	int rc = wfpr__record_parse(view, blob, len);
	if (rc == 0) {
		wfpr_records *records = calloc(1, sizeof(*records));
		if (!records) {
			rc = WFPR_WSAENOBUFS;
		} else {
			records->version = WFPR__WIRE_VERSION;
			records->hop_count = view->hop_count;
			memcpy(records->hops, view->hops, view->hop_count * sizeof(wfpr_hop));
			*out = records;
		}
	}
	free(view);
	return rc;
}

void wfpr_records_free(wfpr_records *records)
{
	free(records);
}

const char *wfpr_sockaddr_format(char *buf, size_t len, const struct sockaddr_storage *addr)
{
	char host[INET6_ADDRSTRLEN];

	if (!buf || len == 0)
		return buf;
	if (addr && addr->ss_family == AF_INET) {
		const struct sockaddr_in *sin = (const struct sockaddr_in *)addr;
		inet_ntop(AF_INET, &sin->sin_addr, host, sizeof(host));
		snprintf(buf, len, "%s:%u", host, ntohs(sin->sin_port));
	} else if (addr && addr->ss_family == AF_INET6) {
		const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)addr;
		inet_ntop(AF_INET6, &sin6->sin6_addr, host, sizeof(host));
		snprintf(buf, len, "[%s]:%u", host, ntohs(sin6->sin6_port));
	} else {
		snprintf(buf, len, "-");
	}
	return buf;
}

const char *wfpr_redirector_id_format(char *buf, size_t len, const uint8_t id[WFPR_REDIRECTOR_ID_SIZE])
{
	if (!buf || len == 0)
		return buf;
	if (!id || len < 2 * WFPR_REDIRECTOR_ID_SIZE + 1) {
		buf[0] = '\0';
		return buf;
	}
	for (size_t i = 0; i < WFPR_REDIRECTOR_ID_SIZE; i++)
		snprintf(buf + 2 * i, 3, "%02x", id[i]);
	return buf;
}
