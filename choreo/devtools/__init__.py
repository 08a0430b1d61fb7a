"""Development tools: the chaos harness, private RabbitMQ clusters, and the sandbox that runs a
whole stack of its own (own vhost, Redis, databases) for tests and chaos runs."""
