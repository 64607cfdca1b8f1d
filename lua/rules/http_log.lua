-- Log the request line and Host header of each HTTP request (the first
-- chunk the client sends), then stop looking at that connection's data.
function on_connect(conn)
  return inspect
end

function on_data(conn, dir, chunk)
  if dir ~= "up" or conn.tag.logged then
    return nil
  end
  local request_line = chunk:match("^([A-Z]+ [^\r\n]* HTTP/%d%.%d)\r\n")
  if request_line then
    local host = chunk:match("\r\n[Hh][Oo][Ss][Tt]:%s*([^\r\n]*)") or "-"
    log("http", tostring(conn.client), request_line, "host=" .. host)
    conn.tag.request_line, conn.tag.host = request_line, host
  end
  conn.tag.logged = true
  return nil
end
