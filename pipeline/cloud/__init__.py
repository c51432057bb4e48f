"""S3, SQS and SNS plumbing: clients, the retry policy, the bucket, the queues, S3 events, notifications."""
