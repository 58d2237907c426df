"""The protocol with no I/O: generators that yield effects and receive replies.

Nothing here imports a client, anyio, OpenTelemetry or a clock. Every ``yield`` is a
point where a process may die; tests cut there, exhaustively.
"""
