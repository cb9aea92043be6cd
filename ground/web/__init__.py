"""The operator web console served by ``umbra-ground serve`` (docs/ground.md)."""
