/* An HTTP/1.x request or response head (inspect.h): the first line, then
 * "Name: value" lines up to the blank line. Strict where RFC 9112 is (a
 * token for the method and header names, no whitespace before the colon,
 * no bare CR), lenient about a bare LF line end, as servers are. */
#include <string.h>
#include "inspect.h"

static bool tchar(unsigned char c)
{
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
	       (c && strchr("!#$%&'*+-.^_`|~", c));
}

/* The line at *at (without its CRLF or LF) into line; false when no line
 * end comes before len. */
static bool next_line(const uint8_t *buf, size_t len, size_t *at, wfpr__http_span *line)
{
	const uint8_t *lf = memchr(buf + *at, '\n', len - *at);
	if (!lf)
		return false;
	size_t end = (size_t)(lf - buf);
	line->p = (const char *)buf + *at;
	line->len = end - *at;
	if (line->len && line->p[line->len - 1] == '\r')
		line->len--;
	*at = end + 1;
	return true;
}

static bool version_of(const char *p, size_t len, int *version)
{
	if (len != 8 || memcmp(p, "HTTP/1.", 7) != 0 || (p[7] != '0' && p[7] != '1'))
		return false;
	*version = p[7] == '1' ? 11 : 10;
	return true;
}

static bool request_line(wfpr__http_head *h, wfpr__http_span l)
{
	const char *sp1 = memchr(l.p, ' ', l.len);
	if (!sp1 || sp1 == l.p)
		return false;
	const char *rest = sp1 + 1, *end = l.p + l.len;
	const char *sp2 = memchr(rest, ' ', (size_t)(end - rest));
	if (!sp2 || sp2 == rest)
		return false;
	for (const char *c = l.p; c < sp1; c++)
		if (!tchar((unsigned char)*c))
			return false;
	for (const char *c = rest; c < sp2; c++)
		if ((unsigned char)*c <= ' ' || *c == 0x7f)
			return false;
	h->method = (wfpr__http_span){l.p, (size_t)(sp1 - l.p)};
	h->target = (wfpr__http_span){rest, (size_t)(sp2 - rest)};
	return version_of(sp2 + 1, (size_t)(end - sp2 - 1), &h->version);
}

static bool status_line(wfpr__http_head *h, wfpr__http_span l)
{
	if (l.len < 12 || !version_of(l.p, 8, &h->version) || l.p[8] != ' ')
		return false;
	int status = 0;
	for (int i = 9; i < 12; i++) {
		if (l.p[i] < '0' || l.p[i] > '9')
			return false;
		status = status * 10 + (l.p[i] - '0');
	}
	if (status < 100 || (l.len > 12 && l.p[12] != ' '))
		return false;
	h->status = status;
	h->reason = l.len > 13 ? (wfpr__http_span){l.p + 13, l.len - 13} : (wfpr__http_span){l.p + l.len, 0};
	return true;
}

static bool header_line(wfpr__http_head *h, wfpr__http_span l)
{
	const char *colon = memchr(l.p, ':', l.len);
	if (!colon || colon == l.p)
		return false;
	for (const char *c = l.p; c < colon; c++)
		if (!tchar((unsigned char)*c))
			return false; /* also no space before the colon */
	const char *v = colon + 1, *end = l.p + l.len;
	for (const char *c = v; c < end; c++)
		if (*c == '\r' || *c == 0)
			return false;
	while (v < end && (*v == ' ' || *v == '\t'))
		v++;
	while (end > v && (end[-1] == ' ' || end[-1] == '\t'))
		end--;
	if (h->n_headers == WFPR__HTTP_MAX_HEADERS) {
		h->cut_headers++;
		return true;
	}
	h->names[h->n_headers] = (wfpr__http_span){l.p, (size_t)(colon - l.p)};
	h->values[h->n_headers++] = (wfpr__http_span){v, (size_t)(end - v)};
	return true;
}

int wfpr__http_parse(wfpr__http_head *out, const uint8_t *buf, size_t len, bool response, const char **why)
{
	static const char *ignored;
	if (!why)
		why = &ignored;
	memset(out, 0, sizeof(*out));
	out->response = response;
	size_t at = 0;
	wfpr__http_span line;
	if (!buf || !next_line(buf, len, &at, &line)) {
		/* no line yet: a prefix of a valid first line, or not HTTP at all */
		size_t n = buf ? len : 0;
		if (response ? (n >= 5 && memcmp(buf, "HTTP/", 5) != 0) || (n < 5 && n && memcmp(buf, "HTTP/", n) != 0)
		             : n && !tchar(buf[0])) {
			*why = response ? "not an HTTP/1 status line" : "not an HTTP/1 request line";
			return WFPR__NOT_THIS;
		}
		*why = "the first line goes on past these bytes";
		return WFPR__INCOMPLETE;
	}
	if (!(response ? status_line(out, line) : request_line(out, line))) {
		memset(out, 0, sizeof(*out));
		*why = response ? "not an HTTP/1 status line" : "not an HTTP/1 request line";
		return WFPR__NOT_THIS;
	}
	while (next_line(buf, len, &at, &line)) {
		if (line.len == 0) {
			out->head_len = at;
			*why = NULL;
			return WFPR__PARSED;
		}
		if (!header_line(out, line)) {
			*why = "a malformed header line";
			return WFPR__NOT_THIS;
		}
	}
	*why = "the head goes on past these bytes";
	return WFPR__INCOMPLETE;
}
