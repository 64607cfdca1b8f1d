-- The SWIG Lua module from a standalone lua5.4: the same API as Python.
-- Run by ctest with package.cpath pointing at the built wfpr.so.
local wfpr = require "wfpr"

local passed, failed = 0, 0
local function test(name, fn)
  local ok, err = pcall(fn)
  if ok then passed = passed + 1 else failed = failed + 1; print("FAIL " .. name .. ": " .. tostring(err)) end
end

local function raises(code_name, fn, ...)
  local ok, err = pcall(fn, ...)
  assert(not ok, "expected " .. code_name)
  assert(type(err) == "table" and err.name == code_name, "got " .. tostring(err))
  return err
end

test("constants and the error table", function()
  assert(wfpr.SIO_QUERY_WFP_CONNECTION_REDIRECT_RECORDS == 0x980000DC)
  assert(wfpr.SIO_SET_WFP_CONNECTION_REDIRECT_RECORDS == 0x980000DE)
  assert(wfpr.IP_WFP_REDIRECT_RECORDS == 60 and wfpr.IP_WFP_REDIRECT_CONTEXT == 70)
  assert(wfpr.WSAEFAULT == 10014 and wfpr.err_name(10014) == "WSAEFAULT")
  assert(wfpr.CONNECTION_REDIRECTED_BY_SELF == 1)
  assert(wfpr.redirect_state_name(3) == "PREVIOUSLY_REDIRECTED_BY_SELF")
end)

test("errors carry the code and its name", function()
  local err = raises("WSAENOTSOCK", wfpr.ioctl, -1, wfpr.SIO_QUERY_WFP_CONNECTION_REDIRECT_RECORDS, nil, 64, false)
  assert(err.code == 10038)
  assert(tostring(err):find("WSAENOTSOCK (10038)", 1, true))
  raises("WSAEINVAL", wfpr.records_decode, "not a record")
end)

test("a layer with a Lua callout blocks a real connect", function()
  local layer = wfpr.layer()
  local h = layer:handle_create(nil, "lua-av")
  assert(h:handle_name() == "lua-av" and #h:redirector_id() == 16)
  local seen
  local id = layer:callout_register("blocker", function(req)
    seen = req
    return req.remote.port == 9 and "block" or "permit"
  end, h)
  layer:filter_add(id, 1, 6, "127.0.0.0", 8, 0, 0, 0, -1, -1, "loopback")
  wfpr.inproc_attach(layer)
  local fd = wfpr.tcp_socket()
  raises("WSAEACCES", wfpr.connect, fd, "127.0.0.1", 9)
  assert(seen.proto == "tcp" and seen.remote.ip == "127.0.0.1" and seen.state == "NOT_REDIRECTED")
  raises("WSAENOTCONN", wfpr.ioctl, fd, wfpr.SIO_QUERY_WFP_CONNECTION_REDIRECT_RECORDS, nil, 64, false)
  assert(layer:stats_snapshot().blocked == 1)
  wfpr.closesocket(fd)
  wfpr.inproc_detach(layer)
end)

test("bad arguments are refused", function()
  local layer = wfpr.layer()
  raises("WSAEINVAL", layer.handle_create, layer, "short id", "x")
  raises("WSAEINVAL", layer.filter_add, layer, 99, 1, 6, "", 0, 0, 0, 0, -1, -1, "no such callout")
  raises("WSAEINVAL", wfpr.connect, wfpr.tcp_socket(), "not an address", 80)
end)

test("the eBPF backend's switch, outside its cgroup", function()
  local fd = wfpr.tcp_socket()
  assert(wfpr.ebpf_available(fd) == 0) -- no BPF program answers for this socket
  wfpr.ebpf_attach(1)
  -- QUERY now goes to the kernel, which has no program here: the backend is down
  raises("WSAENETDOWN", wfpr.ioctl, fd, wfpr.SIO_QUERY_WFP_CONNECTION_REDIRECT_RECORDS, nil, 64, false)
  wfpr.ebpf_attach(0)
  raises("WSAENOTCONN", wfpr.ioctl, fd, wfpr.SIO_QUERY_WFP_CONNECTION_REDIRECT_RECORDS, nil, 64, false)
  wfpr.closesocket(fd)
end)

test("registering with a daemon that is not there says so", function()
  local ok, err = pcall(wfpr.daemon_join, "/nonexistent/control.sock")
  assert(not ok and err.name == "WSAENETDOWN", tostring(err))
  assert(tostring(err):find("no wfpr daemon answers on /nonexistent/control.sock", 1, true), tostring(err))
  raises("WSAEINVAL", wfpr.daemon_register, "/nonexistent", "x", 100, "dport=0", "127.0.0.1", 1234, nil, 0)
  raises("WSAEINVAL", wfpr.daemon_register, "/nonexistent", "bad name!", 100, "", "127.0.0.1", 1234, nil, 0)
end)

print(string.format("%d passed, %d failed", passed, failed))
os.exit(failed == 0 and 0 or 1)
