"""FrontEnd: the public REST API and Swagger UI. Validate, store, acknowledge, hint the JobManager."""
