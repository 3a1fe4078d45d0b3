"""Action, callback and block ids: one place, so builders and listeners agree."""
