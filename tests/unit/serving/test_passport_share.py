"""Owners' share links: a token opens one car's passport until it expires, is revoked or the car is sold."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipelines.errors import PccConfigError, PccNotFoundError, PccValueError
from pipelines.vault import IdentityVault
from serving.passport.cli import app as passport_cli
from serving.passport.errors import ShareLinkError
from serving.passport.share import (
    KEY_FILE,
    SHARE_PARAM,
    STORE_FILE,
    ShareLinks,
    ShareStore,
    load_share_key,
    parse_ttl,
)

VEHICLE = "v-3f9a0c4d2b1e8f7a6c5d4e3f2a1b0c9d"
OTHER = "v-00000000000000000000000000000001"
KEY = bytes(range(32))
WEEK = 7 * 86_400


class Clock:
    def __init__(self, now: float = 1_767_225_600.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path) -> ShareStore:
    return ShareStore(tmp_path / STORE_FILE)


@pytest.fixture
def links(store: ShareStore, clock: Clock) -> ShareLinks:
    return ShareLinks(KEY, store, clock=clock)


def _refused(links: ShareLinks, token: str, vehicle: str = VEHICLE) -> str:
    with pytest.raises(ShareLinkError) as info:
        links.check(token, vehicle)
    assert info.value.status == 403
    return info.value.message


def test_a_link_opens_its_vehicle_until_it_expires(links: ShareLinks, clock: Clock) -> None:
    link = links.create(VEHICLE, WEEK)
    assert link.token is not None and link.expires == int(clock.now) + WEEK
    assert links.check(link.token, VEHICLE).link_id == link.link_id
    assert link.url("http://127.0.0.1:8600/") == (
        f"http://127.0.0.1:8600/passport/{VEHICLE}?{SHARE_PARAM}={link.token}"
    )
    clock.now = link.expires - 1
    links.check(link.token, VEHICLE)
    clock.now = link.expires
    assert "expired at" in _refused(links, link.token)


def test_a_token_opens_no_other_vehicle(links: ShareLinks) -> None:
    token = links.create(VEHICLE, WEEK).token
    assert token is not None
    assert "not made for this vehicle" in _refused(links, token, OTHER)


def test_a_tampered_token_is_refused(links: ShareLinks) -> None:
    token = links.create(VEHICLE, WEEK).token
    assert token is not None
    link_id, expires, mac = token.split(".")

    def flip(text: str) -> str:
        return ("B" if text[0] == "A" else "A") + text[1:]

    for forged in (
        f"{link_id}.{int(expires) + WEEK}.{mac}",  # a longer life
        f"{flip(link_id)}.{expires}.{mac}",  # another link's id
        f"{link_id}.{expires}.{flip(mac)}",  # another signature
    ):
        assert "altered" in _refused(links, forged)
    for malformed in ("", "abc", f"{link_id}.{expires}", f"{link_id}.soon.{mac}", token + "x"):
        assert "malformed" in _refused(links, malformed)


def test_a_token_of_another_key_or_store_is_refused(links: ShareLinks, tmp_path: Path, clock: Clock) -> None:
    other_key = ShareLinks(bytes(32), links.store, clock=clock).create(VEHICLE, WEEK).token
    assert other_key is not None and "altered" in _refused(links, other_key)
    # the right key, but a link this service's store never recorded (an allow-list, not a deny-list)
    elsewhere = ShareLinks(KEY, ShareStore(tmp_path / "other.sqlite"), clock=clock).create(VEHICLE, WEEK)
    assert elsewhere.token is not None
    assert "not one this service made" in _refused(links, elsewhere.token)


def test_a_revoked_link_opens_nothing(links: ShareLinks) -> None:
    first, second, third = (links.create(VEHICLE, WEEK) for _ in range(3))
    assert links.store.revoke(VEHICLE, first.link_id) == 1
    assert links.store.revoke(OTHER, second.link_id) == 0  # a link is revoked through its own car
    assert first.token is not None and "revoked" in _refused(links, first.token)
    assert second.token is not None and links.check(second.token, VEHICLE)
    assert links.store.revoke(VEHICLE) == 2  # every live link of the car
    for link in (second, third):
        assert link.token is not None and "revoked" in _refused(links, link.token)
    assert [entry.revoked_ms is not None for entry in links.store.links(VEHICLE)] == [True] * 3


def test_a_sale_ends_the_sellers_links(store: ShareStore, clock: Clock) -> None:
    owners = {VEHICLE: "o-" + "a" * 32}

    def current_owner(vehicle: str) -> str | None:
        if vehicle not in owners:
            raise PccNotFoundError(f"unknown vehicle pseudonym {vehicle}")
        return owners[vehicle]

    links = ShareLinks(KEY, store, current_owner, clock=clock)
    seller = links.create(VEHICLE, WEEK, owner=owners[VEHICLE]).token
    ownerless = links.create(VEHICLE, WEEK).token  # shared while the vault knew no owner
    assert seller is not None and ownerless is not None
    links.check(seller, VEHICLE)
    owners[VEHICLE] = "o-" + "b" * 32
    assert "changed owner" in _refused(links, seller)
    links.check(ownerless, VEHICLE)
    del owners[VEHICLE]  # erased from the vault
    assert "changed owner" in _refused(links, seller)


def test_ttl_and_key_file(tmp_path: Path) -> None:
    assert [parse_ttl(t) for t in ("7d", "12h", "30m", "2w", "3600", "90 s")] == [
        WEEK, 43_200, 1_800, 2 * WEEK, 3_600, 90,
    ]  # fmt: skip
    for bad in ("7y", "soon", "0", "10s", "91d"):
        with pytest.raises(PccValueError, match="--ttl"):
            parse_ttl(bad)
    path = tmp_path / "state" / KEY_FILE
    key = load_share_key(path)
    assert len(key) == 32 and load_share_key(path) == key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    path.chmod(0o644)
    with pytest.raises(PccConfigError, match="readable by others"):
        load_share_key(path)


def test_the_owner_shares_and_revokes_from_the_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PCC__DATA_DIR", str(tmp_path))
    vin = "1HGCM82633A004352"
    with IdentityVault(tmp_path / "vault" / "identity.sqlite") as vault:
        vehicle = vault.pseudonymize_vehicle(vin)
        owner = vault.pseudonymize_owner({"name": "Ada Example", "id_number": "X1234567"})
        vault.record_ownership(vehicle, owner)
    runner = CliRunner()
    shared = runner.invoke(
        passport_cli, ["share", "--vin", vin, "--ttl", "7d", "--url", "https://pcc.example"]
    )
    assert shared.exit_code == 0, shared.output
    url = shared.stdout.strip()
    assert url.startswith(f"https://pcc.example/passport/{vehicle}?{SHARE_PARAM}=") and vin not in url
    token = url.split("=", 1)[1]
    with IdentityVault(tmp_path / "vault" / "identity.sqlite") as vault:
        links = ShareLinks.open(tmp_path.resolve() / "serving", vault.current_owner)
        link = links.check(token, vehicle)
        assert link.owner == owner
        actions = [e["action"] for e in vault.audit_entries(5)]
        assert "passport_share" in actions
        assert all(vin not in str(e) for e in vault.audit_entries(5))

    listed = runner.invoke(passport_cli, ["links", "--vehicle", vehicle])
    assert listed.exit_code == 0 and link.link_id in listed.stdout and token not in listed.stdout
    revoked = runner.invoke(passport_cli, ["revoke", "--vin", vin, "--link", link.link_id])
    assert revoked.exit_code == 0 and "revoked 1" in revoked.stdout
    assert "revoked" in _refused(links, token, vehicle)
    again = runner.invoke(passport_cli, ["revoke", "--vin", vin, "--link", link.link_id])
    assert isinstance(again.exception, PccNotFoundError)
