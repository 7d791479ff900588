"""The ``mtlkit`` command line."""
