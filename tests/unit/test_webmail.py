"""The webmail recipe, rendered on the laptop: autoconfiguration XML, nginx's sites, and the rules that keep
roundcube's des_key off the laptop and apache off the box."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from miab_remote.engine.planner import check_resources
from miab_remote.engine.recipes import RecipeContext, load_resources, render_files
from miab_remote.engine.resources import Command, File, Package, Resource, Service
from miab_remote.engine.templates import TemplateSet
from miab_remote.fleet.model import DEFAULT_RECIPES, Host
from miab_remote.fleet.options import OPTION_SPECS
from miab_remote.mail import layout
from miab_remote.profiles import DEBIAN_12

NAME = "mx.a.test"


def host(domains: tuple[str, ...] = ("a.test", "b.test"), recipes: tuple[str, ...] = ("webmail",)) -> Host:
    return Host(
        name=NAME,
        path=Path(f"hosts/{NAME}.toml"),
        hostname=NAME,
        address="10.0.0.1",
        domains=domains,
        recipes=recipes,
        options={name: spec.default for name, spec in OPTION_SPECS.items()},
    )


def build(h: Host, tmp_path: Path) -> tuple[list[Resource], dict[str, bytes]]:
    resources = load_resources(h, DEBIAN_12, tmp_path)
    files = render_files(
        resources, RecipeContext(h, DEBIAN_12).template_vars(), TemplateSet(None, DEBIAN_12.template_variants)
    )
    return resources, files


@pytest.fixture
def webmail(tmp_path: Path) -> tuple[list[Resource], dict[str, bytes]]:
    return build(host(), tmp_path)


def test_autoconfig_names_every_domain_and_the_box_servers(webmail: tuple[list[Resource], dict[str, bytes]]) -> None:
    _, files = webmail
    root = ET.fromstring(files["/var/www/autoconfig/mail/config-v1.1.xml"])
    assert root.tag == "clientConfig" and root.get("version") == "1.1"
    provider = root.find("emailProvider")
    assert provider is not None
    assert [d.text for d in provider.findall("domain")] == ["a.test", "b.test"]
    incoming = provider.findall("incomingServer")
    assert len(incoming) == 1 and incoming[0].get("type") == "imap"
    servers = [
        {child.tag: child.text for child in server} | {"type": server.get("type")}
        for server in (*incoming, *provider.findall("outgoingServer"))
    ]
    common = {"hostname": NAME, "authentication": "password-cleartext", "username": "%EMAILADDRESS%"}
    assert servers == [
        {"type": "imap", "port": "993", "socketType": "SSL", **common},
        {"type": "smtp", "port": "465", "socketType": "SSL", **common},
        {"type": "smtp", "port": "587", "socketType": "STARTTLS", **common},
    ]
    login = root.find("webMail/loginPage")
    assert login is not None and login.get("url") == f"https://{NAME}/mail/"


def test_nginx_https_only_tls12_hsts_and_autoconfig_names(webmail: tuple[list[Resource], dict[str, bytes]]) -> None:
    _, files = webmail
    main = files["/etc/nginx/nginx.conf"].decode()
    assert "ssl_protocols TLSv1.2 TLSv1.3;" in main
    assert "include /etc/nginx/sites-enabled" not in main  # Debian's default site is not read
    site = files["/etc/nginx/conf.d/miab-remote-webmail.conf"].decode()
    assert f"server_name {NAME} autoconfig.a.test autoconfig.b.test;" in site
    assert "server_name autoconfig.a.test autoconfig.b.test;" in site
    assert f"return 301 https://{NAME}$request_uri;" in site
    assert f"ssl_certificate {layout.TLS_CERT};" in site and f"ssl_certificate_key {layout.TLS_KEY};" in site
    assert 'add_header Strict-Transport-Security "max-age=31536000" always;' in site
    assert f"fastcgi_pass unix:{DEBIAN_12.paths['php_fpm_socket']};" in site


def test_no_domains_no_autoconfig_server(tmp_path: Path) -> None:
    _, files = build(host(domains=()), tmp_path)
    site = files["/etc/nginx/conf.d/miab-remote-webmail.conf"].decode()
    assert "autoconfig." not in site.replace("autoconfig.DOMAIN", "")
    assert "server_name ;" not in site and "server_name;" not in site


def test_des_key_is_made_on_the_box_and_never_rendered(webmail: tuple[list[Resource], dict[str, bytes]]) -> None:
    resources, files = webmail
    for path, data in files.items():
        assert b"des_key" not in data, path
    config = files["/etc/roundcube/config.inc.php"].decode()
    assert "require '/home/user-data/roundcube/secrets.inc.php';" in config
    assert "'sqlite:////home/user-data/roundcube/db/roundcube.sqlite?mode=0600'" in config
    (key,) = [r for r in resources if isinstance(r, Command) and r.name == "roundcube-des-key"]
    assert key.creates == "/home/user-data/roundcube/secrets.inc.php"
    assert "/dev/urandom" in key.run


def test_php_fpm_is_chosen_before_roundcube_and_apache_is_kept_out(
    webmail: tuple[list[Resource], dict[str, bytes]],
) -> None:
    resources, _ = webmail
    packages = [r for r in resources if isinstance(r, Package)]
    names = [p.name for p in packages]
    assert names.index("php-fpm") < names.index("roundcube")
    assert Package("apache2", present=False) in packages
    services = {r.name for r in resources if isinstance(r, Service)}
    assert {"php8.2-fpm", "nginx"} <= services


def test_the_whole_default_stack_plans_with_webmail(tmp_path: Path) -> None:
    assert DEFAULT_RECIPES.index("webmail") == DEFAULT_RECIPES.index("postfix") + 1
    resources, files = build(host(recipes=DEFAULT_RECIPES), tmp_path)
    check_resources(resources)
    assert sum(isinstance(r, File) and r.path.startswith("/etc/nginx/") for r in resources) == 2
    assert "/etc/roundcube/config.inc.php" in files
