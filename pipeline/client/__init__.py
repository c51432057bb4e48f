"""The client side: submitting and reading jobs (plain S3), and what the CLI shows a person."""
