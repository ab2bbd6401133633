"""Desired state -> plan -> wire: resources, recipes, templates, the pure planner and the converge."""
