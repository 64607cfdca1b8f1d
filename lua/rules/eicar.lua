-- Close any connection that carries the EICAR anti-virus test string, even
-- when it is split across two chunks: the tail of the previous chunk is
-- kept in conn.tag and searched together with the next one.
local EICAR = [[X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*]]
local KEEP = #EICAR - 1

function on_connect(conn)
  return inspect
end

function on_data(conn, dir, chunk)
  local key = "tail_" .. dir
  local window = (conn.tag[key] or "") .. chunk
  if window:find(EICAR, 1, true) then
    log("eicar", dir, tostring(conn.client), "->", tostring(conn.original_dst))
    return close, "EICAR test file, " .. dir
  end
  conn.tag[key] = window:sub(-KEEP)
  return nil
end
