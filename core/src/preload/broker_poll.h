#ifndef WFPR_SRC_PRELOAD_BROKER_POLL_H
#define WFPR_SRC_PRELOAD_BROKER_POLL_H

/* One turn of the broker's loop, for the fuzzer that drives it by hand:
 * 0, 1 once stopped, or a wfpr_err. */

#include "wfpr/broker.h"

int wfpr__broker_poll(wfpr_broker *broker, int timeout_ms);

#endif
