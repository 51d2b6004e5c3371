"""Plumbing the stages share: MLflow tracking, the dataset format, model references, storage, resources."""
