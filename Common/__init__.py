"""Code shared by every RESTfulSwarm actor: config, job schema and states, MongoDB access, messaging."""
