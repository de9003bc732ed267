"""The job spec: config composition (Hydra fenced in hydra_internals), the framework's
schema, its value rules, and the validated JobSpec every launcher plans from."""
