/* The broker's registration key (key.h): its text form and its file. */
#include <ctype.h>
#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>
#include "key.h"
#include "wfpr/error.h"

static int hex_digit(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

bool wfpr__key_parse(const char *hex, uint8_t out[WIRE_KEY_SIZE])
{
	if (!hex)
		return false;
	for (size_t i = 0; i < WIRE_KEY_SIZE; i++) {
		int hi = hex_digit(hex[2 * i]), lo = hi < 0 ? -1 : hex_digit(hex[2 * i + 1]);
		if (hi < 0 || lo < 0)
			return false;
		out[i] = (uint8_t)(hi << 4 | lo);
	}
	char end = hex[WFPR__KEY_HEX];
	return end == '\0' || isspace((unsigned char)end);
}

void wfpr__key_format(char *out, const uint8_t key[WIRE_KEY_SIZE])
{
	static const char digits[] = "0123456789abcdef";
	for (size_t i = 0; i < WIRE_KEY_SIZE; i++) {
		out[2 * i] = digits[key[i] >> 4];
		out[2 * i + 1] = digits[key[i] & 15];
	}
	out[WFPR__KEY_HEX] = '\0';
}

int wfpr__key_read_file(const char *path, uint8_t out[WIRE_KEY_SIZE])
{
	char text[WFPR__KEY_HEX + 2];
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0)
		return WFPR_WSAEACCES;
	ssize_t n = read(fd, text, sizeof(text) - 1);
	close(fd);
	if (n < WFPR__KEY_HEX)
		return WFPR_WSAEACCES;
	text[n] = '\0';
	return wfpr__key_parse(text, out) ? 0 : WFPR_WSAEACCES;
}

int wfpr__key_path(char *out, size_t len, const char *socket_path)
{
	int n = snprintf(out, len, "%s.key", socket_path);
	return n < 0 || (size_t)n >= len ? WFPR_WSAEINVAL : 0;
}

bool wfpr__key_equal(const uint8_t a[WIRE_KEY_SIZE], const uint8_t b[WIRE_KEY_SIZE])
{
	uint8_t diff = 0;
	for (size_t i = 0; i < WIRE_KEY_SIZE; i++)
		diff |= a[i] ^ b[i];
	return diff == 0;
}
