"""A job's run folder (create, latest, lock, resume) and its Lightning Trainer."""
