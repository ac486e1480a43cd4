"""Storage: files written atomically and read with clear errors, and files downloaded once
into a local cache. Imports the standard library only; every other layer may use it."""
