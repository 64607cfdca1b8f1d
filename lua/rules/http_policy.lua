-- HTTP: only GET and HEAD, only to the hosts listed. Until the request head
-- is whole, the rule asks for more (need_more): the proxy holds the bytes,
-- so the server sees nothing before the verdict. A connection that does not
-- start with an HTTP/1 request is closed.
local wfpr = require "wfpr"

local METHODS = { GET = true, HEAD = true }
local HOSTS = { ["example.test"] = true, ["127.0.0.1"] = true, ["localhost"] = true }

function on_connect(conn)
  return inspect
end

function on_data(conn, dir, chunk)
  if dir ~= "up" or conn.tag.decided then
    return nil
  end
  local req, err, why = wfpr.http.request(chunk)
  if (req and not req.complete) or (not req and err == "incomplete") then
    return need_more(1) -- the held bytes and at least one more, next time
  end
  conn.tag.decided = true
  if not req then
    log("http", tostring(conn.client), "not an HTTP/1 request head (" .. why .. "): closed")
    return close, "not an HTTP/1 request: " .. why
  end
  local host = (req.headers.host or ""):gsub(":%d+$", "")
  if not METHODS[req.method] or not HOSTS[host] then
    log("http", tostring(conn.client), req.method, req.target, "host=" .. host, "closed")
    return close, METHODS[req.method] and ("host " .. host .. " is not allowed") or ("method " .. req.method .. " is not allowed")
  end
  log("http", tostring(conn.client), req.method, req.target, "host=" .. host, "pass")
  return nil
end
