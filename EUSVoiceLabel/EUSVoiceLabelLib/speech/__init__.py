"""Automatic mention detection: pronunciations, the recogniser's front end (level, noise
suppression), voice activity, the pocketsphinx keyword spotter, the detection pipeline, and its
evaluation and calibration on cohorts with hand-made mentions."""
