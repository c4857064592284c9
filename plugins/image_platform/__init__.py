"""Airflow-side helpers of the image platform: tasks built from dvc.yaml's stages, the packaged
``spark_jobs`` artifact they submit, and DVC versioning. Imported by the DAGs at parse time, so
nothing heavy (Spark, torch, Great Expectations) is imported here at module level."""
