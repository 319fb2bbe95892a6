-- wrk script: POSTs the distinct signed deliveries of make-deliveries.py to /webhook, each
-- thread its own share of them (a delivery sent twice would be answered from the replay
-- cache). Run:
--   wrk -t2 -c128 -d10s -s benches/wrk/deliveries.lua http://127.0.0.1:8080 -- /tmp/deliveries.tsv 2
-- (the second argument: the number of threads, -t). An optional third argument makes each
-- connection wait that many milliseconds before each request, to hold a load below
-- saturation (closed loop: the rate is about connections / (pause + latency); wrk prints it).
local threads = {}
local counter = 0

function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

function init(args)
  local path = args[1] or "/tmp/deliveries.tsv"
  local every = tonumber(args[2] or "2")
  requests = {}
  local n = 0
  for line in io.lines(path) do
    if n % every == id then
      local tab = line:find("\t", 1, true)
      local signature, body = line:sub(1, tab - 1), line:sub(tab + 1)
      requests[#requests + 1] = wrk.format("POST", "/webhook",
        { ["terra-signature"] = signature, ["content-type"] = "application/json" }, body)
    end
    n = n + 1
  end
  next_request = 0
  non2xx = 0
  pause = tonumber(args[3] or "0")
end

function delay()
  return pause
end

function request()
  next_request = next_request + 1
  if next_request > #requests then
    -- out of distinct deliveries: repeat (they would be replays), say so at the end
    wrapped = true
    next_request = 1
  end
  return requests[next_request]
end

function response(status, headers, body)
  if status ~= 200 then non2xx = non2xx + 1 end
end

function done(summary, latency, requests)
  for _, t in ipairs(threads) do
    if t:get("wrapped") then
      print("WARNING: a thread ran out of distinct deliveries; generate more")
    end
    print(string.format("thread %d: non-200 answers %d, sent %d", t:get("id"), t:get("non2xx"), t:get("next_request")))
  end
end
