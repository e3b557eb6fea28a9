"""Descriptions from other tools' configurations (`hlimage import`): each importer reads its
tool's format without running anything and writes an hlimage.toml with the same meaning."""
