/*
 * The one interface for every language. The generated module is private
 * (wfpr._wfpr in Python); python/wfpr/ and lua/ build the friendly API on it.
 * Language typemaps and glue live in python.i and lua.i; each area file
 * declares what that area exposes.
 */
#if defined(SWIGLUA)
%module wfpr
#else
%module(package="wfpr") _wfpr
#endif

%{
#include "wfpr/wfpr.h"
%}

/* wfpr_layer_new -> layer_new, WFPR_SIO_FLUSH -> SIO_FLUSH */
%rename("%(regex:/^(wfpr|WFPR)_(.*)/\\2/)s") "";

#define WFPR_EXTERN
#define WFPR_BEGIN_DECL
#define WFPR_END_DECL

%include <stdint.i>
%include "wfpr/common.h"
%include "glue.i"

#if defined(SWIGPYTHON)
%include "python.i"
#elif defined(SWIGLUA)
%include "lua.i"
#endif

%include "errors.i"
%include "records.i"
%include "layer.i"
%include "ioctl.i"
%include "socket.i"
%include "broker.i"
%include "ebpf.i"
%include "daemon.i"
#if defined(SWIGPYTHON)
%include "engine.i"
#endif
