"""The Umbra ground segment: telemetry tail and ingest, command signing, console and CLI."""
