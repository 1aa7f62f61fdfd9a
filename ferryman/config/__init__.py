"""Configuration: the schema (typed, frozen models) and the loader that reports file:line errors."""

from ferryman.config.loader import ConfigError, load_config, parse_config
from ferryman.config.schema import Config

__all__ = ["Config", "ConfigError", "load_config", "parse_config"]
