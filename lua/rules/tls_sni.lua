-- TLS: let through only the server names listed, from the ClientHello's SNI,
-- and log each hello's SNI, ALPN and JA4 fingerprint. A ClientHello split
-- over several chunks is gathered in conn.tag (up to 16 KiB); its chunks
-- pass on meanwhile, and nothing past the hello reaches the server before
-- the verdict, since a TLS server answers only a whole ClientHello.
local wfpr = require "wfpr"

local ALLOWED = {
  ["example.test"] = true,
  ["localhost"] = true,
}
local MAX_HELLO = 16384

function on_connect(conn)
  return inspect
end

function on_data(conn, dir, chunk)
  if dir ~= "up" or conn.tag.decided then
    return nil
  end
  local bytes = (conn.tag.hello or "") .. chunk
  local hello, err, why = wfpr.tls.client_hello(bytes)
  if not hello and err == "incomplete" and #bytes < MAX_HELLO then
    conn.tag.hello = bytes
    return nil
  end
  conn.tag.decided, conn.tag.hello = true, nil
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
