"""Where stages run: locally (kubeslim run) or as Kubernetes Jobs."""
