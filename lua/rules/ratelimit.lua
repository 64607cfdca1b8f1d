-- At most LIMIT new connections per client address in each WINDOW-second
-- window, counted across all of this proxy's workers (a shared table, which
-- also keeps its counts when the rule is loaded again).
local wfpr = require "wfpr"

local LIMIT, WINDOW = 5, 1
local counts = wfpr.shared("ratelimit", {size = 65536, ttl = 2 * WINDOW})

function on_connect(conn)
  local ip = conn.client.ip
  local n, err = counts:incr(ip .. "/" .. math.floor(now() / WINDOW))
  if not n then
    log("ratelimit: the shared table is " .. err .. ": not counted") -- fail open
    return pass
  end
  if n > LIMIT then
    return block, "more than " .. LIMIT .. " connections from " .. ip .. " in " .. WINDOW .. " s"
  end
  return pass
end
