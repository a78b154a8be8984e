-- Mixed read traffic: several routes and query strings, a realistic spread of paths instead of one
-- hot URL (route matching and target normalization do real work). GET only.
-- Usage: wrk -t1 -c64 -d10s -s wrk/mixed_paths.lua http://127.0.0.1:8080
local paths = {
  "/api/users/42",
  "/api/users/7?fields=name,email",
  "/api/orders/1001",
  "/api/orders?status=open&page=2",
  "/api/users/42/orders",
  "/api/catalog/items/sku-9f3a",
  "/api/users/42?expand=org",
  "/api/orders/1001/items?limit=50",
}
local i = 0
request = function()
  i = i % #paths + 1
  return wrk.format("GET", paths[i], { ["Accept"] = "application/json",
                                       ["User-Agent"] = "wrk-mixed/1.0" })
end
