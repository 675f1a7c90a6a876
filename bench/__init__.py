"""``python -m bench`` from a checkout: the suite now lives in the package, as :mod:`shoal.bench`.

Kept so that the command of older notes still works; ``shoal bench`` (or
``python -m shoal.bench``) is the same from an installed shoal.
"""
