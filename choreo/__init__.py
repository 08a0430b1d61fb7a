"""choreo: order sagas as a choreography of Celery services over RabbitMQ. The shared kernel
lives here (app, infra, messaging, world) beside the operator tooling (ops, cli, agent,
devtools); each service is a folder under consumers/."""
