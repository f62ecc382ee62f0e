"""Infrastructure every stage shares: the registry and runner, the run-directory map and its catalog, atomic files,
the resumable per-item loop, fingerprints, seeding, provenance, run sharing, how an image is opened and the
error types."""
