"""Authentication and authorization: JWT and API-key credentials, revocation, the audit log.

Modules:
  jwt_check.py    parse and verify one JWT (PyJWT's algorithm objects; the checks PyJWT lacks)
  jwks.py         the JWKS key set: fetched at start and on unknown kid, in the background
  apikeys.py      API-key format, keyed hash, the per-process key ring (keys/<id> in the state)
  revocation.py   revoked jtis (revoked/<jti> in the state), kept until their token's expiry
  identity.py     what an authenticated request carries: the ctx fields and the upstream headers
  auth_filter.py  the route Filter: credentials → identity, scopes → 403
  context.py      the per-process SecurityContext the filters of every route share
  audit.py        audit(event, **fields): JSON lines, bounded, never stalling the loop
  admin.py        admin routes /keys and /tokens, and the gateway_auth_failures_total metric
"""
