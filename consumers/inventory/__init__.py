"""The inventory service: reserves an order's stock and releases it when shipping fails."""
