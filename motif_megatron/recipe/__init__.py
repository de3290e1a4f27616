"""Declarative recipes: steps of the project's commands, arms that override settings, resume by hash."""
