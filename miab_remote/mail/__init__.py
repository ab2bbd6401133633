"""The mail system's own rules: maps, zones, passwords, accounts and the state tree's layout."""
