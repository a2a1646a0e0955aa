"""Pydantic models: the data that crosses a boundary (HTTP, SQS, DynamoDB, Secrets Manager)."""
