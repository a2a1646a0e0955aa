"""The local stack: moto's server, an API Gateway adapter, an SQS event-source poller, a fake Genesys
Cloud API and loopback receivers, all configured from template.yaml. Developer side only: no Lambda
handler imports this package."""
