"""Preference data tools: the on-disk store, importers, export, stats and mixing.

Kept import-free so `cai data --help` stays fast; import the submodules directly.
"""
