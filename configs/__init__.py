"""The named config profiles (``bort --profile NAME``): YAML files, shipped in the wheel as package data.

A package only so that ``pip install .`` puts these files beside ``bort/`` in site-packages, where
:data:`bort.config.CONFIG_DIR` finds them as it does in the source tree. Nothing imports it.
"""
