"""The ModelDeployment API: the pydantic models and what derives from them (validation, the CRD,
the field reference). Pure: no Kubernetes client, no HTTP."""
