-- TLS: let through only the server names listed, from the ClientHello's SNI,
-- and log each hello's SNI, ALPN and JA4 fingerprint. A ClientHello split
-- over several chunks is held by the proxy (need_more) until it is whole:
-- the server sees none of it before the verdict.
local wfpr = require "wfpr"

local ALLOWED = {
  ["example.test"] = true,
  ["localhost"] = true,
}
function on_connect(conn)
  return inspect
end

function on_data(conn, dir, chunk)
  if dir ~= "up" or conn.tag.decided then
    return nil
  end
  local hello, err, why = wfpr.tls.client_hello(chunk)
  if not hello and err == "incomplete" then
    return need_more(1) -- the held bytes and at least one more, next time
  end
  conn.tag.decided = true
  if not hello then
    log("tls", tostring(conn.client), "not a ClientHello (" .. why .. "): closed")
    return close, "not TLS: " .. why
  end
  local verdict = ALLOWED[hello.sni] and "pass" or "closed"
  log("tls", tostring(conn.client), "sni=" .. (hello.sni ~= "" and hello.sni or "-"),
      "alpn=" .. (hello.alpn[1] or "-"), "ja4=" .. hello.ja4, verdict)
  if verdict == "closed" then
    return close, "server name " .. (hello.sni ~= "" and hello.sni or "(none)") .. " is not allowed"
  end
  return nil
end
