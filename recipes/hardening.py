"""A hardened box: a firewall, key-only SSH, fail2ban, time sync and unattended security upgrades.

- Firewall (ufw): incoming traffic is dropped except for the box's services (SSH, SMTP 25, DNS 53 tcp+udp,
  HTTP/HTTPS, submissions 465, submission 587, IMAPS 993, ManageSieve 4190). ufw's own files are rendered
  (the allowed ports in user.rules/user6.rules, ENABLED=yes in ufw.conf) and ufw-init reloads them when
  one changed: nothing runs `ufw allow` on every deploy, so a second deploy changes nothing. Enabling it
  can never cut the deploy's own SSH connection: SSH is in the rules before they are loaded, and ufw's
  before.rules accept established connections.
- SSH: keys only, as a drop-in that sshd reads before its main file; the engine proves key login over a
  second connection before and after sshd reloads (`carries_access`).
- fail2ban: jails for sshd, postfix SASL (465/587), dovecot (993/4190) and, on a box with webmail,
  roundcube; they read the journal (Debian 12 has no auth.log). A ban blocks the jail's ports only, in
  fail2ban's own nftables table: the firewall's files stay as rendered, and a mail client that keeps
  failing cannot lock its address out of SSH, so `miab-remote unban` can always reach the box.
- Time: chrony on a VM or real machine. Inside a container the host owns the clock (no CAP_SYS_TIME, and
  chrony's unit is skipped by its ConditionCapability): time sync is not applicable there, and the deploy
  says so instead of failing. A recipe never sees facts, so this is decided on the box, by a guard.
- Unattended upgrades: security updates only, daily, never an automatic reboot.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from miab_remote.api import Command, File, Package, RecipeContext, Resource, Service, ports

# The only ports open to the world (miab_remote/mail/ports.py says which is what; EC2's security group opens
# the same). The SSH port of the inventory ([ssh] port) is added when it is not 22, so a deploy never locks
# itself out.
TCP_PORTS = ports.TCP_PORTS
UDP_PORTS = ports.UDP_PORTS

# What sshd must end up with. `sshd -T` spells prohibit-password as its older name, without-password.
SSHD_EFFECTIVE = ("permitrootlogin without-password", "passwordauthentication no", "kbdinteractiveauthentication no")

ROUNDCUBE_LOG_DIR = "/var/log/roundcube"
ROUNDCUBE_ERRORS = f"{ROUNDCUBE_LOG_DIR}/errors.log"

# A shell comment in a guard shows in the deploy's reason for skipping it: "guard `... # ...` succeeded".
TIME_SYNC_GUARD = (
    "systemd-detect-virt --container --quiet || systemctl is-active --quiet chrony.service"
    "  # in a container, time sync is not applicable (the host keeps the clock); elsewhere chrony runs"
)


def ufw_rules(ssh_port: int) -> list[dict[str, Any]]:
    """The allow rules as user.rules spells them: one tuple per port, "any" when both TCP and UDP."""
    tcp = set(TCP_PORTS) | {ssh_port}
    rules = []
    for port in sorted(tcp | set(UDP_PORTS)):
        protos = [p for p, ports in (("tcp", tcp), ("udp", UDP_PORTS)) if port in ports]
        rules.append({"port": port, "proto": "any" if len(protos) == 2 else protos[0], "iptables": protos})
    return rules


def sshd_validator() -> str:
    """`sshd -t`, then a check that the effective settings are ours: sshd keeps the first value it reads,
    so a file sorted before ours in sshd_config.d (a cloud image's 50-cloud-init.conf sets
    PasswordAuthentication yes) would silently win. The change is then refused and the old file put back."""
    wants = " ".join(f"'{w}'" for w in SSHD_EFFECTIVE)
    return (
        "sshd -t && t=$(sshd -T) && for want in " + wants + "; do "
        'printf "%s\\n" "$t" | grep -qx "$want" || { '
        'echo "sshd would run with \'$(printf "%s\\n" "$t" | grep "^${want%% *} ")\', not \'$want\': '
        'another file in /etc/ssh/sshd_config.d (read before miab-remote.conf) or sshd_config sets it"; '
        "exit 1; }; done"
    )


def has_webmail(ctx: RecipeContext) -> bool:
    return any(name in ctx.host.recipes for name in ("webmail", "roundcube"))


def resources(ctx: RecipeContext) -> Iterator[Resource]:
    # nftables: fail2ban's ban action; python3-systemd: its journal backend (both only recommended).
    for name in ("ufw", "nftables", "fail2ban", "python3-systemd", "openssh-server", "chrony", "unattended-upgrades"):
        yield Package(name)

    # -- firewall ------------------------------------------------------------------------------------------
    rules = {"ufw_rules": ufw_rules(ctx.host.ssh.port)}
    yield File("/etc/default/ufw", notify=("command:ufw-reload",))
    yield File("/etc/ufw/ufw.conf", notify=("command:ufw-reload",))
    yield File("/etc/ufw/user.rules", mode=0o640, context=rules, notify=("command:ufw-reload",))
    yield File("/etc/ufw/user6.rules", mode=0o640, context=rules, notify=("command:ufw-reload",))
    # ufw-init only reads the files (`ufw reload` would rewrite ufw.conf). It also runs when the rules are
    # not loaded (a fresh box), and `systemctl start` then marks ufw.service active (it finds them loaded).
    yield Command(
        "ufw-reload",
        run="/lib/ufw/ufw-init force-reload && systemctl start ufw.service",
        unless="iptables -n -L ufw-user-input >/dev/null 2>&1 && ip6tables -n -L ufw6-user-input >/dev/null 2>&1",
        on_notify=True,
    )
    yield Service("ufw")  # loads the rules at boot

    # -- SSH: keys only --------------------------------------------------------------------------------------
    yield File("/etc/ssh/sshd_config.d/miab-remote.conf", notify=("service:ssh",))
    yield Service("ssh", reload=True, validator=sshd_validator(), carries_access=True)

    # -- fail2ban --------------------------------------------------------------------------------------------
    webmail = has_webmail(ctx)
    if webmail:
        # roundcube writes errors.log on its first error only, and fail2ban refuses to start a jail whose
        # log file is missing: make it (empty) as logrotate would, with roundcube's owner and mode.
        yield Command(
            "roundcube-errors-log",
            run=(
                f"install -d -o www-data -g adm -m 0750 {ROUNDCUBE_LOG_DIR} && "
                f"install -o www-data -g adm -m 0640 /dev/null {ROUNDCUBE_ERRORS}"
            ),
            creates=ROUNDCUBE_ERRORS,
        )
    yield File(
        "/etc/fail2ban/jail.d/miab-remote.local",
        context={"ssh_ports": sorted({22, ctx.host.ssh.port}), "webmail": webmail},
        notify=("service:fail2ban",),
    )
    # A reload keeps the current bans.
    yield Service("fail2ban", reload=True, validator="fail2ban-client --test >/dev/null")

    # -- time ------------------------------------------------------------------------------------------------
    # Not a Service: chrony is "inactive" in a container by design, which a Service would try to fix.
    yield Command("time-sync", run="systemctl enable --now chrony.service", unless=TIME_SYNC_GUARD)

    # -- unattended security upgrades ------------------------------------------------------------------------
    yield File("/etc/apt/apt.conf.d/20auto-upgrades")
    yield File("/etc/apt/apt.conf.d/50unattended-upgrades")
    yield Service("apt-daily.timer")
    yield Service("apt-daily-upgrade.timer")
