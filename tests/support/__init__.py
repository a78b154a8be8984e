"""Test support: real peer processes (upstream servers, redis-server, the gateway itself)."""
