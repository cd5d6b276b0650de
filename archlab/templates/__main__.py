"""Regenerate the committed root files from family.py.j2: `python -m archlab.templates`."""

from archlab.templates import ROOTS, root_path, write_roots

write_roots()
for name in ROOTS:
    print(root_path(name))
