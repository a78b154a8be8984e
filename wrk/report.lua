-- Shared `done` hook: prints one machine-readable line (used by bench/wrk_profiles.py) with the
-- counts wrk's own summary prints in prose. Append to a profile with: -s wrk/<profile>.lua is
-- single-script, so bench/wrk_profiles.py concatenates the profile and this file.
done = function(summary, latency, requests)
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write
                 + summary.errors.timeout
  io.write(string.format(
    "WRK_RESULT requests=%d duration_us=%d non2xx=%d socket_errors=%d p50_us=%d p99_us=%d\n",
    summary.requests, summary.duration, summary.errors.status, errors,
    latency:percentile(50), latency:percentile(99)))
end
