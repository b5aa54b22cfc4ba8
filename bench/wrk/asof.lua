-- Scenario: as-of snapshot (values known on a past date) of random subjects.
package.path = debug.getinfo(1, "S").source:match("@?(.*/)") .. "?.lua;" .. package.path
local c = require("common")
local path, total
local stamps = { 1451606400, 1546300800, 1609459200, 1672531200, 1704067200 }

function init(args)
  path = c.base() .. "/kamaitachi/api/data/v1/snapshot"
  total = c.subjects_total()
  math.randomseed(11 + (tonumber(args[1]) or 0))
end

function request()
  local s = c.subject(math.random(0, total - 1), total)
  local body = '{"ids":"operating_income,net_profit","subjects":"' .. s .. '","timestamp":' ..
    stamps[math.random(1, #stamps)] .. '}'
  return wrk.format("POST", path, c.headers, body)
end

function done(summary, latency, requests) c.report(summary, latency) end
