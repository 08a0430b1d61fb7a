"""The notification service: tells the customer how the order ended, once."""
