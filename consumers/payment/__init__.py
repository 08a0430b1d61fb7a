"""The payment service: charges an order's card and refunds it when a later step fails."""
