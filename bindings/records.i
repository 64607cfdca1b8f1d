/* records.i: decoding a redirect record into hops (the glue builds the
 * language's list of hops from wfpr_records). */

%ignore wfpr_hop;
%ignore wfpr_records;
%ignore wfpr_records_decode;
%ignore wfpr_records_free;
%ignore wfpr_sockaddr_format;
%ignore wfpr_redirector_id_format;
%include "wfpr/record.h"
