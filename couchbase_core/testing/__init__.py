"""Helpers for testing applications (and this project) against real servers."""
