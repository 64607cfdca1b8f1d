#ifndef WFPR_H
#define WFPR_H

/* The whole public API. */

#include "common.h"
#include "error.h"
#include "record.h"
#include "layer.h"
#include "ioctl.h"
#include "socket.h"
#include "broker.h"
#include "ebpf.h"
#include "match.h"
#include "daemon.h"

#endif
