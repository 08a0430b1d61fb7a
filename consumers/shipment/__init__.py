"""The shipment service: ships what inventory reserved, or says why it cannot."""
