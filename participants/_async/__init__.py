"""Helpers shared by the participants (async sources of ``participants/_sync``)."""
