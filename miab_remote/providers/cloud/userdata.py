"""The cloud-init user data a new server boots with: its SSH host key (made on the laptop, so it is pinned
before the first connection), the operator's key for the login user, and nothing to guess.

Written as JSON, which is YAML too (cloud-init reads `#cloud-config` documents with a YAML parser), so no
YAML emitter is needed and every value is quoted exactly. The keys are cloud-init's own (cc_ssh, cc_set_hostname,
cc_users_groups), the same in Debian 12's cloud-init 22.4 and Debian 13's 25.1:
- `ssh_deletekeys` removes the image's host keys and `ssh_keys` writes ours; with `ssh_keys` given, no other
  key type is generated, so sshd offers exactly the one pinned key;
- `disable_root: false`, or Debian's cloud.cfg would wrap root's authorized key in "Please login as ...";
- `ssh_pwauth: false`: no password logins, whatever password the cloud's API made the server take;
- `fqdn` with `prefer_fqdn_over_hostname` and `manage_etc_hosts`: the box knows its own name from the start.
"""

from __future__ import annotations

import json
from typing import Any

from miab_remote.transport.sshkeys import KeyPair

SUDO_ALL = "ALL=(ALL) NOPASSWD:ALL"


def render(fqdn: str, host_key: KeyPair, authorized_key: str, login_user: str = "root") -> str:
    """The `#cloud-config` document. A login user other than root is made with password-less sudo (the
    transport goes through `sudo -n`), and root keeps no key."""
    config: dict[str, Any] = {
        "hostname": fqdn.split(".", 1)[0],
        "fqdn": fqdn,
        "prefer_fqdn_over_hostname": True,
        "manage_etc_hosts": True,  # the FQDN in /etc/hosts, so `hostname -f` (and postfix's default) know it
        "ssh_deletekeys": True,
        "ssh_keys": {
            "ed25519_private": host_key.private_openssh.decode("ascii"),
            "ed25519_public": host_key.public_line,
        },
        "ssh_pwauth": False,
    }
    if login_user == "root":
        config["disable_root"] = False
        config["users"] = []  # no default user: root is the one login
        config["ssh_authorized_keys"] = [authorized_key]
    else:
        config["disable_root"] = True
        config["users"] = [
            {
                "name": login_user,
                "sudo": SUDO_ALL,
                "shell": "/bin/bash",
                "lock_passwd": True,
                "ssh_authorized_keys": [authorized_key],
            }
        ]
    return "#cloud-config\n" + json.dumps(config, indent=2) + "\n"
