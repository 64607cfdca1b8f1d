/* A DNS message (inspect.h): the header, the questions and the answers,
 * names decompressed with a bound on the pointers followed (no loops). */
#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>
#include "../bytes.h"
#include "inspect.h"

#define HEADER 12
#define MAX_POINTERS 32
#define TYPE_A 1
#define TYPE_NS 2
#define TYPE_CNAME 5
#define TYPE_PTR 12
#define TYPE_TXT 16
#define TYPE_AAAA 28

/* The name at *at in msg (len bytes) into out as "a.b.c" ("." for the
 * root); *at moves past it (past the first pointer). */
static bool read_name(const uint8_t *msg, size_t len, size_t *at, char *out, size_t cap)
{
	size_t pos = *at, written = 0;
	int pointers = 0;
	bool jumped = false;
	for (;;) {
		if (pos >= len)
			return false;
		uint8_t n = msg[pos];
		if ((n & 0xc0) == 0xc0) {
			if (pos + 1 >= len || ++pointers > MAX_POINTERS)
				return false;
			size_t to = (size_t)(n & 0x3f) << 8 | msg[pos + 1];
			if (!jumped)
				*at = pos + 2;
			jumped = true;
			if (to >= len)
				return false;
			pos = to;
			continue;
		}
		if (n & 0xc0)
			return false; /* the extended label types are obsolete */
		if (n == 0) {
			if (!jumped)
				*at = pos + 1;
			break;
		}
		if (pos + 1 + n > len || written + n + 1 >= cap)
			return false;
		if (written)
			out[written++] = '.';
		for (size_t i = 0; i < n; i++) {
			char c = (char)msg[pos + 1 + i];
			out[written++] = c == '.' || c == 0 ? '?' : c; /* a dot inside a label is not a separator */
		}
		pos += 1 + n;
	}
	if (written == 0)
		out[written++] = '.';
	out[written] = '\0';
	return true;
}

static bool read_u16(const uint8_t *msg, size_t len, size_t *at, uint16_t *v)
{
	if (*at + 2 > len)
		return false;
	*v = (uint16_t)(msg[*at] << 8 | msg[*at + 1]);
	*at += 2;
	return true;
}

static bool read_rr(const uint8_t *msg, size_t len, size_t *at, wfpr__dns_rr *rr, bool question)
{
	if (!read_name(msg, len, at, rr->name, sizeof(rr->name)) || !read_u16(msg, len, at, &rr->type) ||
	    !read_u16(msg, len, at, &rr->klass))
		return false;
	if (question)
		return true;
	uint16_t hi, lo, rdlen;
	if (!read_u16(msg, len, at, &hi) || !read_u16(msg, len, at, &lo) || !read_u16(msg, len, at, &rdlen) ||
	    *at + rdlen > len)
		return false;
	rr->ttl = (uint32_t)hi << 16 | lo;
	const uint8_t *rd = msg + *at;
	size_t rd_at = *at;
	*at += rdlen;
	switch (rr->type) {
	case TYPE_A:
		return rdlen == 4 && inet_ntop(AF_INET, rd, rr->data, sizeof(rr->data));
	case TYPE_AAAA:
		return rdlen == 16 && inet_ntop(AF_INET6, rd, rr->data, sizeof(rr->data));
	case TYPE_CNAME:
	case TYPE_NS:
	case TYPE_PTR:
		return read_name(msg, rd_at + rdlen, &rd_at, rr->data, sizeof(rr->data));
	case TYPE_TXT:
		if (rdlen == 0 || (size_t)rd[0] + 1 > rdlen)
			return false;
		memcpy(rr->data, rd + 1, rd[0]);
		rr->data[rd[0]] = '\0';
		for (size_t i = 0; i < rd[0]; i++)
			if (!rr->data[i])
				rr->data[i] = '?';
		return true;
	default:
		return true;
	}
}

int wfpr__dns_parse(wfpr__dns_msg *out, const uint8_t *buf, size_t len, bool tcp, const char **why)
{
	static const char *ignored;
	if (!why)
		why = &ignored;
	memset(out, 0, sizeof(*out));
	if (!buf)
		len = 0;
	if (tcp) {
		if (len < 2) {
			*why = "the message goes on past these bytes";
			return WFPR__INCOMPLETE;
		}
		size_t n = (size_t)buf[0] << 8 | buf[1];
		if (n < HEADER) {
			*why = "a TCP length too short for a DNS message";
			return WFPR__NOT_THIS;
		}
		if (len - 2 < n) {
			*why = "the message goes on past these bytes";
			return WFPR__INCOMPLETE;
		}
		buf += 2;
		len = n;
	}
	if (len < HEADER) {
		*why = "shorter than a DNS header";
		return WFPR__NOT_THIS;
	}
	out->id = (uint16_t)(buf[0] << 8 | buf[1]);
	out->flags = (uint16_t)(buf[2] << 8 | buf[3]);
	size_t qd = (size_t)buf[4] << 8 | buf[5], an = (size_t)buf[6] << 8 | buf[7], at = HEADER;
	if (qd > 255 || (out->flags >> 11 & 0xf) > 6) {
		memset(out, 0, sizeof(*out));
		*why = "not a DNS message (counts or opcode)";
		return WFPR__NOT_THIS;
	}
	for (size_t i = 0; i < qd + an; i++) {
		bool question = i < qd;
		wfpr__dns_rr scratch, *rr = &scratch;
		if (question && out->n_questions < WFPR__DNS_MAX_RECORDS)
			rr = &out->questions[out->n_questions++];
		else if (!question && out->n_answers < WFPR__DNS_MAX_RECORDS)
			rr = &out->answers[out->n_answers++];
		memset(rr, 0, sizeof(*rr));
		if (!read_rr(buf, len, &at, rr, question)) {
			memset(out, 0, sizeof(*out));
			*why = "a malformed DNS message";
			return WFPR__NOT_THIS;
		}
	}
	*why = NULL;
	return WFPR__PARSED;
}
