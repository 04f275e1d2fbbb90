"""Labelling procedures with a trained model: the labelling run (predictions, confidences,
Grad-CAM heat maps per mention window), its output files, and the ``label`` command's whole
procedure-folder-to-output-folder job."""
