"""Infrastructure every stage shares: the registry and runner, the run-directory map and its catalog, atomic files,
the resumable per-item loop, fingerprints, seeding, provenance, run sharing and how an image is opened (the
error types are the package's ground floor, ``sgid_utils.errors``)."""
