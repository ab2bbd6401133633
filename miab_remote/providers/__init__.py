"""Providers make and remove boxes; `local` builds real Debian boxes on this machine (systemd-nspawn)."""
