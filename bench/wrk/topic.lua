-- Scenario: the whole listing pool, top 100 by operating income.
package.path = debug.getinfo(1, "S").source:match("@?(.*/)") .. "?.lua;" .. package.path
local c = require("common")
local body = '{"ids":"operating_income,net_profit","topic":"stock_a_listing_pool","field":"operating_income","order":-1,"limit":100}'
local path

function init(args) path = c.base() .. "/kamaitachi/api/data/v1/snapshot" end
function request() return wrk.format("POST", path, c.headers, body) end
function done(summary, latency, requests) c.report(summary, latency) end
