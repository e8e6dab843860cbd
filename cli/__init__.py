"""The ``tfjf`` command line: thin click commands over the tfjetflows API."""
