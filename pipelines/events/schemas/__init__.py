"""The versioned JSON Schemas of PCC events (package data, loaded by name)."""
