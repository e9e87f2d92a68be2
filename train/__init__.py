"""Training: synthetic cohort, datasets, patient-level splits, training loop, evaluation."""
