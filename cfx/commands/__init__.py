"""Sub-commands of python -m cfx that live in their own modules."""
