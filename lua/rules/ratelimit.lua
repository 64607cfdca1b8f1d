-- At most LIMIT new connections per client address in any WINDOW seconds.
local LIMIT, WINDOW = 5, 1.0
local recent = {} -- client ip -> list of connection times

function on_connect(conn)
  local ip, t = conn.client.ip, now()
  local times, kept = recent[ip] or {}, {}
  for _, seen in ipairs(times) do
    if t - seen < WINDOW then kept[#kept + 1] = seen end
  end
  if #kept >= LIMIT then
    recent[ip] = kept
    return block
  end
  kept[#kept + 1] = t
  recent[ip] = kept
  return pass
end
