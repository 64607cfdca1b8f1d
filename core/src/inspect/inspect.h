#ifndef WFPR_SRC_INSPECT_H
#define WFPR_SRC_INSPECT_H

/*
 * Protocol helpers for inspection rules (docs/rules.md, "Protocol helpers"):
 * a TLS ClientHello with its JA4 fingerprint, an HTTP/1 request or response
 * head, and a DNS message. Each reads only the bytes it is given, never more
 * than their length, and fills fixed-size tables (what does not fit is cut and
 * counted). Each returns WFPR__PARSED, WFPR__INCOMPLETE (the start of one, give
 * it more bytes) or WFPR__NOT_THIS (with *why). Fuzzed by fuzz-inspect.
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define WFPR__PARSED 1
#define WFPR__INCOMPLETE 0
#define WFPR__NOT_THIS -1

/* ---- TLS ---- */

#define WFPR__TLS_MAX_LIST 128 /* ciphers, extensions, versions, signature algorithms */
#define WFPR__TLS_MAX_ALPN 8

typedef struct wfpr__tls_hello {
	uint16_t legacy_version;
	char sni[256]; /* "" when none */
	size_t n_alpn;
	char alpn[WFPR__TLS_MAX_ALPN][256];
	size_t n_versions, n_ciphers, n_extensions, n_sig_algs; /* GREASE values included */
	uint16_t versions[WFPR__TLS_MAX_LIST], ciphers[WFPR__TLS_MAX_LIST], extensions[WFPR__TLS_MAX_LIST],
	        sig_algs[WFPR__TLS_MAX_LIST];
	char ja4[40]; /* t13d1516h2_8daaf6152771_e5627efa2ab1 */
} wfpr__tls_hello;

/* A ClientHello at the start of buf (TLS records, as a client sends them). */
int wfpr__tls_client_hello(wfpr__tls_hello *out, const uint8_t *buf, size_t len, const char **why);
/* Is v a GREASE value (RFC 8701)? */
bool wfpr__tls_grease(uint16_t v);

/* ---- HTTP/1 ---- */

#define WFPR__HTTP_MAX_HEADERS 100

typedef struct wfpr__http_span {
	const char *p;
	size_t len;
} wfpr__http_span;

typedef struct wfpr__http_head {
	bool response;
	wfpr__http_span method, target, reason; /* request: method and target; response: reason */
	int version;                            /* 10 or 11 */
	int status;                             /* response */
	size_t n_headers, cut_headers;          /* cut: past WFPR__HTTP_MAX_HEADERS */
	wfpr__http_span names[WFPR__HTTP_MAX_HEADERS], values[WFPR__HTTP_MAX_HEADERS];
	size_t head_len; /* with the blank line, when complete */
} wfpr__http_head;

/* The head at the start of buf. WFPR__INCOMPLETE still fills what came
 * whole (the first line, the headers so far). */
int wfpr__http_parse(wfpr__http_head *out, const uint8_t *buf, size_t len, bool response, const char **why);

/* ---- DNS ---- */

#define WFPR__DNS_MAX_RECORDS 32

typedef struct wfpr__dns_rr {
	char name[256];
	uint16_t type, klass;
	uint32_t ttl;
	char data[256]; /* A/AAAA: the address; CNAME/NS/PTR: the name; TXT: the first string; else "" */
} wfpr__dns_rr;

typedef struct wfpr__dns_msg {
	uint16_t id, flags;
	size_t n_questions, n_answers; /* those kept (at most WFPR__DNS_MAX_RECORDS each) */
	wfpr__dns_rr questions[WFPR__DNS_MAX_RECORDS], answers[WFPR__DNS_MAX_RECORDS];
} wfpr__dns_msg;

/* A message in buf: a datagram (tcp false) or TCP's 2-byte length first. */
int wfpr__dns_parse(wfpr__dns_msg *out, const uint8_t *buf, size_t len, bool tcp, const char **why);

#endif
