-- Authenticated traffic: every request carries `Authorization: Bearer <token>` (and a client
-- X-Request-Id on half of them), the shape of real API traffic behind a gateway. The token comes
-- from the environment so a freshly minted JWT can be used:
--   WRK_TOKEN=$(gateway jwt mint --sub bench-user) wrk -t1 -c64 -d10s -s wrk/auth_header.lua URL
-- Without WRK_TOKEN a fixed opaque token is sent (routes without auth simply forward it).
local token = os.getenv("WRK_TOKEN") or "opaque-bench-token-0123456789abcdef"
local n = 0
request = function()
  n = n + 1
  local headers = { ["Authorization"] = "Bearer " .. token, ["Accept"] = "application/json" }
  if n % 2 == 0 then headers["X-Request-Id"] = "wrk-" .. n end
  return wrk.format("GET", "/api/users/" .. (n % 1000), headers)
end
