#ifndef WFPR_TEST_H
#define WFPR_TEST_H

/* A tiny assertion kit: each failed CHECK prints where and why and counts;
 * test_main's exit status is the verdict ctest reads. */

#include <stdio.h>
#include <stdlib.h>
#include "wfpr/wfpr.h"

extern int test_failures;

#define CHECK(cond)                                                                \
	do {                                                                           \
		if (!(cond)) {                                                             \
			fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
			test_failures++;                                                       \
		}                                                                          \
	} while (0)

#define CHECK_EQ(a, b)                                                             \
	do {                                                                           \
		long long a_ = (long long)(a), b_ = (long long)(b);                        \
		if (a_ != b_) {                                                            \
			fprintf(stderr, "%s:%d: CHECK_EQ failed: %s == %s (%lld != %lld)\n",  \
			        __FILE__, __LINE__, #a, #b, a_, b_);                           \
			test_failures++;                                                       \
		}                                                                          \
	} while (0)

/* A Winsock-shaped call failed with this last error. */
#define CHECK_FAILS_WITH(call, err)                                                \
	do {                                                                           \
		int rc_ = (int)(call);                                                     \
		int le_ = wfpr_get_last_error();                                           \
		if (rc_ != WFPR_SOCKET_ERROR || le_ != (int)(err)) {                       \
			fprintf(stderr, "%s:%d: %s: rc %d, last error %s (%d), expected %s\n", \
			        __FILE__, __LINE__, #call, rc_, wfpr_err_name(le_), le_, #err); \
			test_failures++;                                                       \
		}                                                                          \
	} while (0)

#define RUN(test)                                    \
	do {                                             \
		int before_ = test_failures;                 \
		test();                                      \
		printf("%s %s\n", test_failures == before_ ? "ok  " : "FAIL", #test); \
	} while (0)

#define TEST_MAIN_END() return test_failures ? 1 : 0

#endif
