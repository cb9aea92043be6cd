"""The MQTT bus between node and ground."""
