-- DNS: drop queries for blocked names (and everything below them), over
-- UDP; log each question. Other datagrams pass unchanged.
local wfpr = require "wfpr"

local BLOCKED = { "ads.example.test", "tracker.test" }

local function blocked(name)
  name = name:lower()
  for _, b in ipairs(BLOCKED) do
    if name == b or name:sub(-#b - 1) == "." .. b then
      return true
    end
  end
  return false
end

function on_connect(conn)
  return conn.proto == "udp" and inspect or pass
end

function on_datagram(flow, dir, data)
  if dir ~= "up" then
    return nil
  end
  local msg = wfpr.dns.message(data)
  if not msg or msg.response then
    return nil
  end
  for _, q in ipairs(msg.questions) do
    if blocked(q.name) then
      log("dns", tostring(flow.client), "query", q.name, "type=" .. q.type, "dropped")
      return drop, "blocked name " .. q.name
    end
    log("dns", tostring(flow.client), "query", q.name, "type=" .. q.type, "pass")
  end
  return nil
end
