"""Settings (environment variables, CHOREO_*; DOMAINS registers the domains) and the sandbox
catalog's data (cards, SKUs, prices, opening stock, addresses, customers)."""
