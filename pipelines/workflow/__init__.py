"""The end-to-end run: the request, stage caching and resume, the pipeline, retraining, the sentinel."""
