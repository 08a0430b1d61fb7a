"""The order service: places orders, keeps each order's event-sourced history and read model,
and decides how a saga ends."""
