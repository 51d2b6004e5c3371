"""Ray and MLflow stages of adm-pipeline. The only package that imports ray and mlflow."""
