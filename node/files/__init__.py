"""The file service: files to and from orbit over the bus (docs/ICD.md §5.9)."""
