"""Ray and MLflow stages of adm-pipeline. The only package that imports ray and mlflow.

Sub-packages by role, imports pointing one way (ARCHITECTURE.md): cli -> workflow -> stages -> infra -> components;
ops (reaching a cluster from outside) uses infra and components only.
"""

from pathlib import Path

# the checkout (or install) root: the folder holding components/, pipelines/ and, in a checkout, cluster/
PROJECT_ROOT = Path(__file__).resolve().parents[1]
