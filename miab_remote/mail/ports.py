"""The ports a box serves to the world, in one place: the hardening recipe's firewall opens exactly these
(through miab_remote.api), and so does a cloud's own firewall in front of the box (EC2's security group).

22 is SSH (the inventory's [ssh] port is added by the firewall when it is not 22), 25 SMTP, 53 DNS (nsd, over
UDP too), 80 and 443 the webmail and ACME, 465 submissions, 587 submission, 993 IMAPS, 4190 ManageSieve."""

from __future__ import annotations

TCP_PORTS: tuple[int, ...] = (22, 25, 53, 80, 443, 465, 587, 993, 4190)
UDP_PORTS: tuple[int, ...] = (53,)
