"""The Stillhouse worker: claims jobs from the database and runs the training pipeline."""
