"""Everything that is not Slack. Imports ``storage``, never ``bot``; heavy libraries are imported
where they are used so that ``import engine`` stays fast."""
