"""Projections: checkpointed folds of the log into read tables (the state of every run,
the index of all runs), rebuilt from the log while serving, and index dumps in object
storage."""
