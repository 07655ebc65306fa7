"""The ``plic`` command line."""
