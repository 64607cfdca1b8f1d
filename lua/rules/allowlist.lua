-- Allow connections only to listed destinations; block everything else.
-- Edit ALLOWED: "ip:port", or "ip:*" for any port of that address.
local ALLOWED = {
  ["127.0.0.1:80"] = true,
  ["127.0.0.1:443"] = true,
  ["::1:*"] = true,
}

function on_connect(conn)
  local dst = conn.original_dst
  if ALLOWED[dst.ip .. ":" .. dst.port] or ALLOWED[dst.ip .. ":*"] then
    return pass
  end
  log("blocked", conn.proto, tostring(conn.client), "->", tostring(dst))
  return block
end
