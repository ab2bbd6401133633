"""Servers in a cloud, through apache-libcloud: one `CloudProvider` flow over a `CloudAdapter` per cloud
(digitalocean, linode, vultr, ec2; adapter.py says what an adapter holds).

A create: check everything the cloud is asked (credentials, region, size, image, the name unused) before
anything is made; generate the box's SSH host key here and hand it to the server in its cloud-init user
data; ask for the server; wait, with progress and a bound, until it runs and its port 22 presents exactly
that key (firstcontact.py; any other key is refused before authentication and the server destroyed, unless
the operator chose to keep it). Anything that fails or is interrupted after the server was asked for
destroys it again: no server is left running and forgotten.
"""

from __future__ import annotations

import importlib
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

from miab_remote.errors import InputError, MiabError, ProviderError
from miab_remote.fleet.model import Host
from miab_remote.providers.base import BoxStatus, CreatedBox, CreateOptions, Journal, NodeKeyMismatch, Progress
from miab_remote.providers.cloud import calls, credentials, endpoint, firstcontact, userdata
from miab_remote.providers.cloud.adapter import CloudAdapter, NodeView, Offer
from miab_remote.providers.cloud.calls import api_call
from miab_remote.transport.sshkeys import fingerprint_line, generate_ed25519

ADAPTERS: dict[str, str] = {
    "digitalocean": "miab_remote.providers.cloud.digitalocean:DigitalOcean",
    "linode": "miab_remote.providers.cloud.linode:Linode",
    "vultr": "miab_remote.providers.cloud.vultr:Vultr",
    "ec2": "miab_remote.providers.cloud.ec2:EC2",
}


def adapter_for(name: str) -> CloudAdapter:
    where = ADAPTERS.get(name)
    if where is None:
        raise InputError(f"{name}: creating boxes on this cloud is not available yet; available: {', '.join(ADAPTERS)}")
    module, cls = where.split(":")
    adapter: CloudAdapter = getattr(importlib.import_module(module), cls)()
    return adapter


def cloud_provider(name: str, options: CreateOptions) -> CloudProvider:
    return CloudProvider(adapter_for(name), options)


def _quiet(_line: str) -> None:
    """The progress callback when the caller wants none."""


class CloudProvider:
    """The `Provider` for one cloud; `options` are the create's (region, size, endpoint, ...)."""

    def __init__(self, adapter: CloudAdapter, options: CreateOptions | None = None) -> None:
        self.adapter = adapter
        self.options = options or CreateOptions()
        self.name = adapter.name
        self.images = tuple(adapter.images)
        self._offer: Offer | None = None
        self._driver: Any = None
        self._creds: credentials.Credentials | None = None
        self._api: endpoint.Endpoint | None = None  # the API the driver talks to, once connected

    # -- the checks, before anything is made

    @property
    def default_image(self) -> str:
        """The newest Debian the tool supports that the cloud offers (once preflight asked it)."""
        return self._offer.os if self._offer is not None else self.images[0]

    def check_name(self, name: str) -> str:
        if len(name) > self.adapter.label_limit:
            raise InputError(
                f"{name}: {self.adapter.label} takes server names of at most {self.adapter.label_limit} characters"
            )
        self.adapter.check_label(name)
        return name

    def check_image(self, image: str) -> str:
        for os_id, cloud_image in self.adapter.images.items():
            if image in (os_id, cloud_image):
                return os_id
        accepted = ", ".join(f"{os_id} ({cloud_image})" for os_id, cloud_image in self.adapter.images.items())
        raise InputError(
            f"{image!r} is not an image miab-remote makes {self.adapter.label} boxes of; accepted: {accepted}"
        )

    def validate_config(self) -> None:
        calls.refuse_debug_log()
        self.adapter.check_options(self.options)
        self._credentials()
        self._endpoint()

    def check_requirements(self) -> None:
        """Nothing on this machine: libcloud is one of the tool's own dependencies."""

    def preflight(self, names: Sequence[str], image: str | None) -> None:
        driver = self._connect()
        self._offer = self._make_offer(driver, image)
        with self._call("listing the servers"):
            existing = self.adapter.node_names(driver)
        taken = [f"{n} (id {existing[n]})" for n in names if n in existing]
        if taken:
            raise calls.CloudRefused(
                f"{self.adapter.label} already has a server named {', '.join(taken)}; destroy it or choose another "
                "name; nothing was made"
            )

    # -- create

    def create(
        self,
        name: str,
        authorized_key: str,
        progress: Progress | None = None,
        image: str | None = None,
        journal: Journal | None = None,
    ) -> CreatedBox:
        say = progress or _quiet
        note: Journal = journal or (lambda _node: None)
        deadline = time.monotonic() + self.options.timeout
        driver = self._connect()
        offer = self._offer if self._offer is not None and image in (None, self._offer.os) else None
        offer = offer or self._make_offer(driver, image)
        label = self.adapter.label
        host_key = generate_ed25519(f"root@{name}")
        with self._call("registering your SSH key"):
            key_ref = self.adapter.ensure_key(driver, authorized_key)
        data = userdata.render(name, host_key, authorized_key, self.adapter.ssh_user)
        say(f"asking {label} for a {offer.size} server in {offer.region} ({offer.image})")
        asked = {"region": offer.region, "size": offer.size, "image": offer.image}
        if (ep := self._api) is not None:
            asked["endpoint"] = ep.url
        note(asked)  # killed before the answer: the next run finds the server by its name
        try:
            with self._call("creating the server"):
                made = self.adapter.create_node(driver, name, offer, data, key_ref, self.options)
        except calls.CloudRefused:
            note(None)  # refused: nothing was made (any other failure may come after the server was made)
            raise
        record = {**made, **asked}
        note(record)
        try:
            view = self._wait_running(driver, record, deadline, say)
            with self._call("finishing the server"):
                view = self.adapter.finish_node(driver, record, view, self.options)
            assert view.ipv4 is not None
            box = CreatedBox(
                name=name,
                address=view.ipv4,
                host_key_public=host_key.public_line,
                os=offer.os,
                ssh_user=self.adapter.ssh_user,
                node=dict(record),
                ipv4=view.ipv4,
                ipv6=view.ipv6,
                notes=self._notes(name),
            )
            say(f"waiting for SSH on {view.ipv4} to present the host key made here")
            self._first_contact(box, driver, deadline, say, note)
        except NodeKeyMismatch:
            raise
        except BaseException as exc:
            self._undo(driver, record, exc, say, note)
            raise
        say(f"up at {box.address}")
        return box

    def _first_contact(self, box: CreatedBox, driver: Any, deadline: float, say: Progress, note: Journal) -> None:
        try:
            firstcontact.wait_for_key(box.address, box.host_key_public, deadline, say)
        except TimeoutError:
            raise ProviderError(
                f"{box.address} did not answer SSH within {self.options.timeout:.0f} s of the request"
            ) from None
        except firstcontact.KeyRefused as e:
            expected = fingerprint_line(box.host_key_public)
            where = f"{self.adapter.label} server {box.node['id']} at {box.address}"
            if self.options.on_key_mismatch == "destroy":
                say("the server presented another host key: destroying it")
                self._destroy_record(driver, box.node)
                note(None)
                fate = "it was destroyed"
            else:
                fate = f"it is kept for you to look at: destroy it with `miab-remote destroy {box.name}`"
            raise NodeKeyMismatch(
                f"{where} presented another SSH host key than the one it was given, so it was refused before "
                f"authentication; {fate}\n    expected: {expected}\n    offered:  {e.offered}",
                box,
                e.offered,
                destroyed=self.options.on_key_mismatch == "destroy",
            ) from None

    def _wait_running(self, driver: Any, record: Mapping[str, str], deadline: float, say: Progress) -> NodeView:
        started = time.monotonic()
        pause = 1.0
        said = -10.0
        while True:
            with self._call("waiting for the server"):
                view = self.adapter.node(driver, record)
            if view.state == "running" and view.ipv4:
                return view
            if view.state in ("gone", "error", "stopped"):
                raise ProviderError(f"{self.adapter.label} server {record['id']} is {view.state} instead of running")
            waited = time.monotonic() - started
            if time.monotonic() + pause > deadline:
                raise ProviderError(
                    f"{self.adapter.label} server {record['id']} was not running after {waited:.0f} s "
                    f"(--timeout {self.options.timeout:.0f})"
                )
            if waited - said >= 10:
                say(f"waiting for the server to run ({waited:.0f} s, {view.state})")
                said = waited
            time.sleep(pause)
            pause = min(pause + 1.0, 5.0)

    def _undo(self, driver: Any, record: Mapping[str, str], exc: BaseException, say: Progress, note: Journal) -> None:
        """A create that failed after the server was asked for: destroy it (and say so in the error)."""
        say("the create failed: destroying the new server")
        try:
            self._destroy_record(driver, record)
            note(None)
        except BaseException as cleanup:
            why = str(cleanup) or type(cleanup).__name__
            if isinstance(exc, MiabError):
                exc.args = (
                    f"{exc}\n(destroying {self.adapter.label} server {record['id']} failed too: {why}; "
                    f"remove it in {self.adapter.label}'s console)",
                )

    def _notes(self, name: str) -> tuple[str, ...]:
        notes = [f"next: miab-remote deploy {name}"]
        if self.adapter.reverse_dns:
            notes.append(self.adapter.reverse_dns)
        if self.adapter.port25:
            notes.append(self.adapter.port25)
        return tuple(notes)

    # -- destroy

    def destroy(self, name: str, node: Mapping[str, str] | None = None) -> list[str]:
        """Remove the server `node` records; one asked for by a create killed before the cloud's answer (a
        record without an id) is found by its name, which is the box's."""
        if not node:
            raise InputError(
                f"{name}: its inventory records no {self.adapter.label} server ([node] id); nothing was touched"
            )
        driver = self._connect(node)
        if not node.get("id"):
            with self._call("looking the server up by its name"):
                ident = self.adapter.node_names(driver).get(name)
            if ident is None:
                return [f"{self.adapter.label} has no server named {name}: nothing was made"]
            node = {**node, "id": ident}
        return self._destroy_record(driver, node)

    def _destroy_record(self, driver: Any, node: Mapping[str, str]) -> list[str]:
        with self._call(f"destroying server {node['id']}"):
            return self.adapter.destroy_node(driver, node)

    def status(self, name: str, node: Mapping[str, str] | None = None) -> BoxStatus:
        if not node or not node.get("id"):
            return "absent"
        with self._call("reading the server"):
            state = self.adapter.node(self._connect(node), node).state
        return {"running": "running", "gone": "absent"}.get(state, "stopped")  # type: ignore[return-value]

    def before_deploy(self, host: Host) -> list[str]:
        return []

    def after_deploy(self, host: Host) -> list[str]:
        return []

    def public_resolvers(self) -> tuple[str, ...]:
        return ()  # a cloud's boxes are on the internet: the laptop's own resolvers see them

    # -- the API

    def _credentials(self) -> credentials.Credentials:
        if self._creds is None:
            self._creds = credentials.load(self.name, self.adapter.fields, self.adapter.required)
        return self._creds

    def _endpoint(self, recorded: str | None = None) -> endpoint.Endpoint | None:
        """The API to talk to: an existing server's own (`recorded` in its [node] table: it lives there,
        whatever the environment says now), else --endpoint, else the provider's variable, else the default."""
        if recorded:
            return endpoint.parse(recorded, "the inventory's [node] endpoint")
        if self.options.endpoint:
            return endpoint.parse(self.options.endpoint, "--endpoint")
        if chosen := os.environ.get(self.adapter.endpoint_variable):
            return endpoint.parse(chosen, self.adapter.endpoint_variable)
        return None

    def _url(self, ep: endpoint.Endpoint | None) -> str:
        return ep.url if ep is not None else self.adapter.default_endpoint

    def _call(self, doing: str) -> Any:
        return api_call(self.adapter.label, doing, self._credentials().mask, self._url(self._api))

    def _connect(self, recorded: Mapping[str, str] | None = None) -> Any:
        """The driver; for an existing server (`recorded`: its [node] table), the API and region it was made
        through, whatever the environment says now (EC2's ids are regional)."""
        if self._driver is None:
            calls.refuse_debug_log()
            recorded = recorded or {}
            ep = self._api = self._endpoint(recorded.get("endpoint"))
            region = recorded.get("region") or self.adapter.region(self._credentials(), self.options.region)
            with self._call("connecting"):
                self._driver = self.adapter.connect(self._credentials(), ep, region)
        return self._driver

    def _make_offer(self, driver: Any, image: str | None) -> Offer:
        region = self.adapter.region(self._credentials(), self.options.region)
        size = self.options.size or self.adapter.default_size
        with self._call("checking the region, size and image"):
            if image is None:
                offered = self.adapter.offered_images(driver)
                image = next((os_id for os_id, i in self.adapter.images.items() if i in offered), self.images[0])
            os_id = self.check_image(image)
            return self.adapter.offer(driver, region, size, self.adapter.images[os_id], os_id)
