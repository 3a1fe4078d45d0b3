"""`threadtune demo`: the whole loop on one machine, with a seeded local Slack workspace."""
