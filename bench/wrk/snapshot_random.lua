-- Scenario: single-subject snapshot of a random subject (fixed seed).
package.path = debug.getinfo(1, "S").source:match("@?(.*/)") .. "?.lua;" .. package.path
local c = require("common")
local path, total

function init(args)
  path = c.base() .. "/kamaitachi/api/data/v1/snapshot"
  total = c.subjects_total()
  math.randomseed(42 + (tonumber(args[1]) or 0))
end

function request()
  local s = c.subject(math.random(0, total - 1), total)
  local body = '{"ids":"operating_income,net_profit","subjects":"' .. s .. '"}'
  return wrk.format("POST", path, c.headers, body)
end

function done(summary, latency, requests) c.report(summary, latency) end
