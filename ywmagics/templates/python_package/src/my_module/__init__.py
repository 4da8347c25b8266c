"""A ywmagics backend: its manifest is ywbackend.toml, next to this file."""
