"""Adapters that plug memorix-pg into agent frameworks (each needs its optional extra)."""
