"""Users' own model classes (``framework: python``), written to the contract in the README.

The replicas import them from the Python path: Ray puts the driver's working directory (the
repository's root) on its workers' path, as ``serve run`` from a project's root does.
"""
