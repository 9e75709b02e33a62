"""The reference kvp.io v1 server (needs the ``server`` extra)."""
