"""Infrastructure below whoever uses it: settings, logging, the S3 object store client and
the embedded PostgreSQL and SeaweedFS servers. Knows nothing of runs."""
