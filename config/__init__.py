"""Configuration: typed settings (settings.py), YAML files and the beat schedule."""
