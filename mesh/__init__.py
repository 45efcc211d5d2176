"""The mesh as files: the route table and what is generated from it (see routes.yaml)."""
