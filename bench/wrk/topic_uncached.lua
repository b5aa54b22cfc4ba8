-- Scenario: the whole listing pool, top 100 by operating income, as of a
-- random second of 2016..2024: every body differs, so no finished response
-- is reused and each answer is computed (from cached series when the cache
-- holds them, from SQLite when it is disabled).
package.path = debug.getinfo(1, "S").source:match("@?(.*/)") .. "?.lua;" .. package.path
local c = require("common")
local path

function init(args)
  path = c.base() .. "/kamaitachi/api/data/v1/snapshot"
  math.randomseed(5 + (tonumber(args[1]) or 0))
end

function request()
  local ts = math.random(1451606400, 1735603200)
  local body = '{"ids":"operating_income,net_profit","topic":"stock_a_listing_pool","field":"operating_income","order":-1,"limit":100,"timestamp":' .. ts .. '}'
  return wrk.format("POST", path, c.headers, body)
end

function done(summary, latency, requests) c.report(summary, latency) end
