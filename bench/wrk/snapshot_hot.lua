-- Scenario: one hot question (1 subject, 2 ids) asked again and again.
package.path = debug.getinfo(1, "S").source:match("@?(.*/)") .. "?.lua;" .. package.path
local c = require("common")
local body = '{"ids":"operating_income,net_profit","subjects":"33:000001"}'
local path

function init(args) path = c.base() .. "/kamaitachi/api/data/v1/snapshot" end
function request() return wrk.format("POST", path, c.headers, body) end
function done(summary, latency, requests) c.report(summary, latency) end
