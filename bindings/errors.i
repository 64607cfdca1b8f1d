/* errors.i: the Winsock/Win32 code table, its names and the last error. */

%include "wfpr/error.h"
