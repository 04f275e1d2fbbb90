"""Training and evaluating the network: the run configuration (the paper's settings), the
resumable training loop, model checkpoints, leave-one-patient-out folds, metrics and the
Table III evaluation, folds in parallel processes, data-parallel training under torchrun, and the
pretraining of the keyword network."""
