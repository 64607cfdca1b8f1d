-- Tag a connection in on_connect; every later hook of that connection sees
-- the same conn.tag table (until on_close).
function on_connect(conn)
  conn.tag.kind = (conn.original_dst.port == 80) and "http" or "other"
  conn.tag.chunks = 0
  return inspect
end

function on_data(conn, dir, chunk)
  conn.tag.chunks = conn.tag.chunks + 1
  return nil
end

function on_close(conn, stats)
  log("closed", conn.tag.kind, conn.tag.chunks, "chunks", stats.bytes_up, "bytes up")
end
