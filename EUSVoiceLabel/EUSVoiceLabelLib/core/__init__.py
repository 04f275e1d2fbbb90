"""Infrastructure every other part uses: the project's errors, atomic file writing and
hashing, the one-writer lock on output paths, the paper's numbers and the variant table, the
progress/cancel protocol and worker process pools.  Standard library only (tqdm is imported
when a progress bar is shown)."""
