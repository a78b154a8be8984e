"""gateway"""

# The one place the version is written: pyproject.toml reads it (dynamic version), `gateway
# --version`, the start-up log, /health and /config show it.
__version__ = "0.1.0"
