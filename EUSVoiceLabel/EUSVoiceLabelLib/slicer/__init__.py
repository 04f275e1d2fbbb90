"""Slicer-free helpers of the 3D Slicer module: building procedures from what the module's
widgets and nodes give, the review table, and the files Slicer opens natively (volume
sequences, markups, colour tables, the scene).  Nothing here imports Slicer, Qt or VTK, so
all of it is tested without Slicer."""
