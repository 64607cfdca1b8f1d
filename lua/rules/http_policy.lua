-- HTTP: only GET and HEAD, only to the hosts listed. The request head is
-- gathered in conn.tag until it is whole (up to 16 KiB); a connection that
-- does not start with an HTTP/1 request is closed.
local wfpr = require "wfpr"

local METHODS = { GET = true, HEAD = true }
local HOSTS = { ["example.test"] = true, ["127.0.0.1"] = true, ["localhost"] = true }
local MAX_HEAD = 16384

function on_connect(conn)
  return inspect
end

function on_data(conn, dir, chunk)
  if dir ~= "up" or conn.tag.decided then
    return nil
  end
  local bytes = (conn.tag.head or "") .. chunk
  local req, err, why = wfpr.http.request(bytes)
  local whole = req and req.complete
  if not whole and (req or err == "incomplete") and #bytes < MAX_HEAD then
    conn.tag.head = bytes -- its chunks pass on meanwhile: the server waits for the rest of the head too
    return nil
  end
  conn.tag.decided, conn.tag.head = true, nil
  if not req or not req.complete then
    log("http", tostring(conn.client), "not an HTTP/1 request head (" .. (why or "too long") .. "): closed")
    return close, "not an HTTP/1 request: " .. (why or "a head over 16 KiB")
  end
  local host = (req.headers.host or ""):gsub(":%d+$", "")
  if not METHODS[req.method] or not HOSTS[host] then
    log("http", tostring(conn.client), req.method, req.target, "host=" .. host, "closed")
    return close, METHODS[req.method] and ("host " .. host .. " is not allowed") or ("method " .. req.method .. " is not allowed")
  end
  log("http", tostring(conn.client), req.method, req.target, "host=" .. host, "pass")
  return nil
end
