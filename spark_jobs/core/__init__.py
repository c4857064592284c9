"""The platform's core: typed params, the Spark session, the object store (local or S3), tables,
manifests and the one stage runner every stage's ``main()`` goes through."""
