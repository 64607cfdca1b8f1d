/* A TLS ClientHello and its JA4 fingerprint (inspect.h). JA4 as FoxIO
 * specifies it: protocol, version, SNI or not, cipher and extension counts,
 * ALPN's first and last character; then the truncated SHA-256 of the sorted
 * ciphers, and of the sorted extensions (without SNI and ALPN) with the
 * signature algorithms in their order. GREASE values are left out. */
#include <ctype.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "../bytes.h"
#include "inspect.h"

#define RECORD_HANDSHAKE 22
#define HANDSHAKE_CLIENT_HELLO 1
#define EXT_SNI 0x0000
#define EXT_ALPN 0x0010
#define EXT_SIG_ALGS 0x000d
#define EXT_VERSIONS 0x002b
#define HELLO_MAX (1u << 16) /* a ClientHello this long is not one a client sends */

bool wfpr__tls_grease(uint16_t v)
{
	return (v & 0x0f0f) == 0x0a0a && (v >> 8) == (v & 0xff);
}

static void add(uint16_t *list, size_t *n, uint16_t v)
{
	if (*n < WFPR__TLS_MAX_LIST)
		list[(*n)++] = v;
}

/* A u16 list with a length prefix of prefix_bytes (1 or 2). */
static bool read_u16_list(cursor *c, size_t prefix_bytes, uint16_t *list, size_t *n)
{
	cursor body;
	uint16_t len16 = 0;
	uint8_t len8 = 0;
	if ((prefix_bytes == 2 ? !cursor_get_u16(c, &len16) : !cursor_get_u8(c, &len8)) ||
	    !cursor_get_sub(c, &body, prefix_bytes == 2 ? len16 : len8) || body.len % 2)
		return false;
	uint16_t v;
	while (cursor_get_u16(&body, &v))
		add(list, n, v);
	return true;
}

static bool copy_name(char *out, size_t cap, const uint8_t *p, size_t len)
{
	if (len >= cap)
		return false;
	for (size_t i = 0; i < len; i++)
		if (p[i] == 0)
			return false;
	memcpy(out, p, len);
	out[len] = '\0';
	return true;
}

static bool parse_sni(wfpr__tls_hello *h, cursor *ext)
{
	cursor list, name;
	uint16_t len;
	uint8_t type;
	if (!cursor_get_u16(ext, &len) || !cursor_get_sub(ext, &list, len))
		return false;
	while (cursor_get_u8(&list, &type)) {
		if (!cursor_get_u16(&list, &len) || !cursor_get_sub(&list, &name, len))
			return false;
		if (type == 0 && !h->sni[0] && !copy_name(h->sni, sizeof(h->sni), name.data, name.len))
			return false;
	}
	return true;
}

static bool parse_alpn(wfpr__tls_hello *h, cursor *ext)
{
	cursor list, proto;
	uint16_t len;
	uint8_t n;
	if (!cursor_get_u16(ext, &len) || !cursor_get_sub(ext, &list, len))
		return false;
	while (cursor_get_u8(&list, &n)) {
		if (!cursor_get_sub(&list, &proto, n) || n == 0)
			return false;
		if (h->n_alpn < WFPR__TLS_MAX_ALPN && copy_name(h->alpn[h->n_alpn], sizeof(h->alpn[0]), proto.data, n))
			h->n_alpn++;
	}
	return true;
}

/* The ClientHello body (after the handshake header). */
static bool parse_hello(wfpr__tls_hello *h, cursor *c)
{
	cursor skip, exts, ext;
	uint8_t n8;
	uint16_t n16, type;
	if (!cursor_get_u16(c, &h->legacy_version) || !cursor_get_sub(c, &skip, 32) || /* random */
	    !cursor_get_u8(c, &n8) || n8 > 32 || !cursor_get_sub(c, &skip, n8) ||      /* session id */
	    !read_u16_list(c, 2, h->ciphers, &h->n_ciphers) || !cursor_get_u8(c, &n8) ||
	    !cursor_get_sub(c, &skip, n8)) /* compression methods */
		return false;
	if (c->len == 0)
		return true; /* no extensions (TLS 1.0 clients may send none) */
	if (!cursor_get_u16(c, &n16) || !cursor_get_sub(c, &exts, n16))
		return false;
	while (cursor_get_u16(&exts, &type)) {
		if (!cursor_get_u16(&exts, &n16) || !cursor_get_sub(&exts, &ext, n16))
			return false;
		add(h->extensions, &h->n_extensions, type);
		bool ok = true;
		if (type == EXT_SNI)
			ok = parse_sni(h, &ext);
		else if (type == EXT_ALPN)
			ok = parse_alpn(h, &ext);
		else if (type == EXT_VERSIONS)
			ok = read_u16_list(&ext, 1, h->versions, &h->n_versions);
		else if (type == EXT_SIG_ALGS)
			ok = read_u16_list(&ext, 2, h->sig_algs, &h->n_sig_algs);
		if (!ok)
			return false;
	}
	return true;
}

static int cmp_u16(const void *a, const void *b)
{
	return (int)*(const uint16_t *)a - (int)*(const uint16_t *)b;
}

/* list's non-GREASE values (those not in skip), sorted when asked, as
 * "002f,0035" into out (room for every one); their count. */
static size_t hex_list(char *out, const uint16_t *list, size_t n, bool sorted, bool skip_sni_alpn)
{
	uint16_t kept[WFPR__TLS_MAX_LIST];
	size_t k = 0;
	for (size_t i = 0; i < n; i++)
		if (!wfpr__tls_grease(list[i]) && !(skip_sni_alpn && (list[i] == EXT_SNI || list[i] == EXT_ALPN)))
			kept[k++] = list[i];
	if (sorted)
		qsort(kept, k, sizeof(kept[0]), cmp_u16);
	size_t at = 0;
	out[0] = '\0';
	for (size_t i = 0; i < k; i++)
		at += (size_t)sprintf(out + at, i ? ",%04x" : "%04x", kept[i]);
	return k;
}

static EVP_MD *sha256;
static pthread_once_t sha256_once = PTHREAD_ONCE_INIT;

static void fetch_sha256(void)
{
	sha256 = EVP_MD_fetch(NULL, "SHA256", NULL); /* once: an implicit fetch per digest costs a microsecond */
}

static void hash12(char *out, const char *text)
{
	uint8_t md[32];
	if (!*text) {
		memcpy(out, "000000000000", 13);
		return;
	}
	pthread_once(&sha256_once, fetch_sha256);
	EVP_Digest(text, strlen(text), md, NULL, sha256 ? sha256 : EVP_sha256(), NULL);
	for (int i = 0; i < 6; i++)
		sprintf(out + 2 * i, "%02x", md[i]);
}

static const char *version_code(uint16_t v)
{
	switch (v) {
	case 0x0304: return "13";
	case 0x0303: return "12";
	case 0x0302: return "11";
	case 0x0301: return "10";
	case 0x0300: return "s3";
	default: return "00";
	}
}

static void ja4(wfpr__tls_hello *h)
{
	uint16_t version = h->legacy_version;
	bool from_ext = false;
	for (size_t i = 0; i < h->n_versions; i++)
		if (!wfpr__tls_grease(h->versions[i]) && (!from_ext || h->versions[i] > version)) {
			version = h->versions[i];
			from_ext = true;
		}
	char alpn[3] = "00";
	if (h->n_alpn) {
		const char *a = h->alpn[0];
		size_t n = strlen(a);
		if (isalnum((unsigned char)a[0]) && isalnum((unsigned char)a[n - 1])) {
			alpn[0] = a[0];
			alpn[1] = a[n - 1];
		} else { /* the first and last hex digits of the value */
			static const char hex[] = "0123456789abcdef";
			alpn[0] = hex[(unsigned char)a[0] >> 4];
			alpn[1] = hex[(unsigned char)a[n - 1] & 15];
		}
	}
	/* 5 characters per value, and the "_" and signature algorithms */
	static _Thread_local char ciphers[5 * WFPR__TLS_MAX_LIST + 1], exts[10 * WFPR__TLS_MAX_LIST + 2];
	size_t n_ciphers = hex_list(ciphers, h->ciphers, h->n_ciphers, true, false);
	size_t n_exts = 0;
	for (size_t i = 0; i < h->n_extensions; i++)
		n_exts += !wfpr__tls_grease(h->extensions[i]);
	size_t kept = hex_list(exts, h->extensions, h->n_extensions, true, true);
	size_t at = strlen(exts);
	if (kept && h->n_sig_algs) {
		exts[at++] = '_';
		hex_list(exts + at, h->sig_algs, h->n_sig_algs, false, false);
	}
	char b[13], c[13];
	hash12(b, ciphers);
	hash12(c, kept ? exts : "");
	snprintf(h->ja4, sizeof(h->ja4), "t%s%c%02zu%02zu%s_%s_%s", version_code(version), h->sni[0] ? 'd' : 'i',
	         n_ciphers > 99 ? (size_t)99 : n_ciphers, n_exts > 99 ? (size_t)99 : n_exts, alpn, b, c);
}

int wfpr__tls_client_hello(wfpr__tls_hello *out, const uint8_t *buf, size_t len, const char **why)
{
	static const char *ignored;
	if (!why)
		why = &ignored;
	memset(out, 0, sizeof(*out));
	if (!buf || len == 0) {
		*why = "no bytes";
		return WFPR__INCOMPLETE;
	}
	if (buf[0] != RECORD_HANDSHAKE) {
		*why = "not a TLS handshake record";
		return WFPR__NOT_THIS;
	}
	/* the handshake message may span records: gather their bodies */
	static _Thread_local uint8_t hs[HELLO_MAX + 4];
	size_t have = 0, need = 0;
	cursor c;
	cursor_init(&c, buf, len);
	while (need == 0 || have < need) {
		uint8_t type;
		uint16_t version, rlen;
		cursor body;
		if (!cursor_get_u8(&c, &type) || !cursor_get_u16(&c, &version) || !cursor_get_u16(&c, &rlen)) {
			*why = "the ClientHello goes on past these bytes";
			return WFPR__INCOMPLETE;
		}
		if (type != RECORD_HANDSHAKE || (version >> 8) != 3 || rlen == 0 || rlen > (1u << 14) + 2048) {
			*why = "not a TLS handshake record";
			return WFPR__NOT_THIS;
		}
		if (!cursor_get_sub(&c, &body, rlen)) {
			*why = "the ClientHello goes on past these bytes";
			return WFPR__INCOMPLETE;
		}
		size_t take = body.len;
		if (have + take > sizeof(hs))
			take = sizeof(hs) - have;
		memcpy(hs + have, body.data, take);
		have += take;
		if (need == 0 && have >= 4) {
			if (hs[0] != HANDSHAKE_CLIENT_HELLO) {
				*why = "a TLS handshake, but not a ClientHello";
				return WFPR__NOT_THIS;
			}
			need = 4 + ((size_t)hs[1] << 16 | (size_t)hs[2] << 8 | hs[3]);
			if (need > sizeof(hs)) {
				*why = "a ClientHello longer than 64 KiB";
				return WFPR__NOT_THIS;
			}
		}
	}
	cursor hello;
	cursor_init(&hello, hs + 4, need - 4);
	if (!parse_hello(out, &hello)) {
		memset(out, 0, sizeof(*out));
		*why = "a malformed ClientHello";
		return WFPR__NOT_THIS;
	}
	ja4(out);
	*why = NULL;
	return WFPR__PARSED;
}
