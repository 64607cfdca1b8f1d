"""Fixtures for the integration tests; the helpers are in itsupport.py (a
name of its own, so these tests and tests/python can run in one pytest)."""
from itsupport import http_server, rules, started, wfpr_run, www  # noqa: F401 - fixtures
