"""Infrastructure every other part uses: the project's errors, atomic file writing and
hashing, and the one-writer lock on output paths.  Standard library only."""
