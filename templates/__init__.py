"""Jinja2 templates shipped as the resource package onion_gateway.templates (read by onion_gateway.render)."""
