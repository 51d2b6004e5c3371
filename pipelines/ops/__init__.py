"""Reaching a cluster from outside: job submission and retraining schedules."""
