"""Templates and assets of the passport page (package data)."""
