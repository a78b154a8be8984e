"""Configuration: environment → Settings (env.py); TOML → validated GatewayConfig (schema.py)."""
from .env import VARIABLES, Settings, load_settings, mask_url_password, unknown_variables
from .errors import ConfigErrors, ConfigurationError, EnvError
from .model import GatewayConfig, RouteConfig, ServiceConfig, TargetConfig
from .schema import load_config, loads_config, parse_config

__all__ = [
    "VARIABLES", "ConfigErrors", "ConfigurationError", "EnvError", "GatewayConfig", "RouteConfig",
    "ServiceConfig", "Settings", "TargetConfig", "load_config", "load_settings", "loads_config",
    "mask_url_password", "parse_config", "unknown_variables",
]
