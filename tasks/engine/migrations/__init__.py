"""Migrations: reading, linting, planning, applying and recording them."""
