"""Registry store and VXU intake tests (SQLite and PostgreSQL)."""
