"""Helpers for testing applications (and this project): real servers
(:mod:`.memcached`, :mod:`.signals`) and scripted sockets for the engine's
transport seam (:mod:`.scripted`)."""
