"""Jinja2 templates for agent workspace files, one directory per gateway generation.

A package (shipped as `hub.templates`) so hub/rendering.py loads them the same way
from a source checkout and from an installed wheel.
"""
