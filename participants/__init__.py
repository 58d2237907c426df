"""Participant adapters: the stores a Lockstep transaction commits to.

Each backend lives in its own subpackage and imports its client library only there, so
each is an optional extra: ``memory`` and ``sqlite`` need nothing beyond Python.
"""
