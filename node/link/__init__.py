"""The serial link between node and board: messages, frame codec, reliable channel."""
