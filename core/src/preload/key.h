#ifndef WFPR_SRC_PRELOAD_KEY_H
#define WFPR_SRC_PRELOAD_KEY_H

/*
 * The broker's registration key: 32 random bytes that a proxy presents to
 * REGISTER. Written as 64 hex digits: in the key file (mode 0600, beside
 * the socket: PATH.key), on the command line of nothing, and in no
 * environment. See docs/trust.md.
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "wire.h"

#define WFPR__KEY_HEX (2 * WIRE_KEY_SIZE)

/* 64 hex digits, then the end of the text or white space; false otherwise. */
bool wfpr__key_parse(const char *hex, uint8_t out[WIRE_KEY_SIZE]);
/* 64 hex digits and a NUL into out (WFPR__KEY_HEX + 1 bytes). */
void wfpr__key_format(char *out, const uint8_t key[WIRE_KEY_SIZE]);
/* The key in the file at path: 0, or a wfpr_err (WSAEACCES when it cannot
 * be read or is not a key). */
int wfpr__key_read_file(const char *path, uint8_t out[WIRE_KEY_SIZE]);
/* The path of the key file of the broker socket at socket_path. */
int wfpr__key_path(char *out, size_t len, const char *socket_path);
/* In time that does not depend on where they differ. */
bool wfpr__key_equal(const uint8_t a[WIRE_KEY_SIZE], const uint8_t b[WIRE_KEY_SIZE]);

#endif
