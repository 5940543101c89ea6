"""Examples of moving an existing app onto the service (see each directory's README)."""
