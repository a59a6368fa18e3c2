"""couchbase_core.mock: a Couchbase cluster emulator (work in progress)."""
