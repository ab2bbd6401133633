"""The operator's data on the laptop: the host model, the inventory's rules, schema and store."""
