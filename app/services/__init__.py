"""Plain functions with the service's logic; routes stay thin and call these."""
