-- Shared helpers for the Kamaitachi wrk scripts. The target URL's path is a
-- prefix: http://127.0.0.1:8080 for a node, http://127.0.0.1:9000/data for
-- the gateway.
local M = {}

function M.base()
  local p = wrk.path or "/"
  if p == "/" then return "" end
  return (p:gsub("/$", ""))
end

M.headers = { ["Content-Type"] = "application/json" }

-- The subject with index n (0-based) of a database made by `gen-data`
-- (default 5,000 subjects: 3/5 Shenzhen, the rest Shanghai).
function M.subject(n, total)
  total = total or 5000
  local sz = math.floor(total * 3 / 5)
  if n < sz then
    if n % 4 == 3 then return string.format("33:%06d", 300001 + n) end
    return string.format("33:%06d", 1 + n)
  end
  local k = n - sz
  if k % 5 == 4 then return string.format("17:%06d", 688001 + k) end
  return string.format("17:%06d", 600000 + k)
end

function M.subjects_total()
  return tonumber(os.getenv("KMT_SUBJECTS") or "5000")
end

-- Prints p50/p99 in a line bench scripts parse.
function M.report(summary, latency)
  io.write(string.format("KMT requests=%d errors=%d non2xx=%d p50_ms=%.3f p99_ms=%.3f rps=%.1f\n",
    summary.requests,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.errors.status,
    latency:percentile(50) / 1000.0, latency:percentile(99) / 1000.0,
    summary.requests / (summary.duration / 1e6)))
end

return M
