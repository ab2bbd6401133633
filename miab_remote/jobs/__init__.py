"""The use cases the CLI (and later a web UI) call: deploy, accounts, create, destroy, trust, bans, checks."""
