-- Scenario: three years of history of a random subject (fixed seed).
package.path = debug.getinfo(1, "S").source:match("@?(.*/)") .. "?.lua;" .. package.path
local c = require("common")
local path, total

function init(args)
  path = c.base() .. "/kamaitachi/api/data/v1/period"
  total = c.subjects_total()
  math.randomseed(7 + (tonumber(args[1]) or 0))
end

function request()
  local s = c.subject(math.random(0, total - 1), total)
  local body = '{"ids":"operating_income,net_profit,total_profit","subjects":"' .. s ..
    '","from":1640995200,"to":1735603200}'
  return wrk.format("POST", path, c.headers, body)
end

function done(summary, latency, requests) c.report(summary, latency) end
