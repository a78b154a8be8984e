-- Writes: POST with a ~1 KiB JSON body (Content-Length framed), so the request-body streaming path
-- is measured, not only heads. The upstream's reply does not depend on the body.
-- Usage: wrk -t1 -c64 -d10s -s wrk/post_body.lua http://127.0.0.1:8080
local item = '{"sku":"sku-9f3a","qty":2,"price":1999,"note":"gift wrap, leave at the door"}'
local items = {}
for n = 1, 12 do items[n] = item end
local body = '{"user":42,"org":"acme","items":[' .. table.concat(items, ",") .. ']}'
request = function()
  return wrk.format("POST", "/api/orders", {
    ["Content-Type"] = "application/json",
    ["Accept"] = "application/json",
  }, body)
end
