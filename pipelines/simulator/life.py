"""One vehicle's life: daily mileage, telematics, services, inspections, accidents, sales.

Everything for vehicle ``i`` comes from one generator seeded with ``(seed, i)``,
so a vehicle's events do not depend on how the fleet is chunked.  Events are
built as :class:`Proto` records first (time, type, source, payload without the
odometer); the odometer is filled in at the end from the car's true mileage,
through the displayed-odometer transforms that frauds install.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from pipelines.simulator.config import SimulationConfig, sources_of
from pipelines.simulator.ids import iso_date, rfc3339_ms, uuid7s
from pipelines.simulator.names import CITIES, DEFECTS, FIRST_NAMES, LAST_NAMES, SERVICE_ITEMS, WMIS, City
from pipelines.vin import VIN_CHARACTERS, with_check_digit

DAY_MS = 86_400_000
YEAR = 365.25

CONNECTED = sources_of("connected_car")
INSPECTION = sources_of("inspection_centre")
NET_GARAGES = sources_of("garage", in_network=True)
IND_GARAGES = sources_of("garage", in_network=False)
INSURERS = sources_of("insurer")
MANUAL = sources_of("manual_entry")[0]

# profile: (median km on a driving day, weekday factor, weekend factor, share)
PROFILES = {
    "commuter": (38.0, 1.15, 0.6, 0.62),
    "long_haul": (150.0, 1.1, 0.7, 0.13),
    "weekend": (14.0, 0.5, 2.4, 0.25),
}
SERVICE_TYPES = ("periodic_service", "oil_change", "brakes", "tyres", "timing_belt", "other")
SERVICE_P = (0.7, 0.1, 0.08, 0.07, 0.03, 0.02)
REPAIR_TYPES = ("bodywork", "mechanical", "electrical", "glass", "other")
REPAIR_P = (0.6, 0.2, 0.05, 0.1, 0.05)

OdoTransform = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass(slots=True, eq=False)
class Proto:
    """An event before rendering: the odometer and the id are filled in later."""

    t: int  # event time, epoch ms
    etype: str
    source: str
    payload: dict[str, object]
    has_odo: bool = True
    clone_odo: int | None = None  # the clone's own odometer (cloned identity)
    typo: bool = False


@dataclass(slots=True, eq=False)
class Label:
    kind: str
    events: list[Proto]
    start_ms: int
    end_ms: int
    detail: dict[str, object] = field(default_factory=dict)
    variant: dict[str, str] | None = None  # how this case was drawn (fraud labels only)
    detectable: bool | None = None  # whether the data on record can show it at all


def identity(rng: np.random.Generator, country: str) -> dict[str, str]:
    """A fake but realistic owner identity."""
    name = (
        f"{FIRST_NAMES[int(rng.integers(len(FIRST_NAMES)))]} {LAST_NAMES[int(rng.integers(len(LAST_NAMES)))]}"
    )
    number = int(rng.integers(10**8, 10**9))
    return {"name": name, "id_number": f"{country}{number}{VIN_CHARACTERS[number % 23 + 10]}"}


class Life:
    """The honest life of vehicle ``index``; frauds (simulator.frauds) edit it before rendering."""

    def __init__(self, cfg: SimulationConfig, index: int) -> None:
        self.cfg = cfg
        self.index = index
        self.rng = rng = np.random.default_rng([cfg.seed, index])
        self.n = n = cfg.days
        self.start_ms = cfg.start_ms
        self.end_ms = self.start_ms + n * DAY_MS
        self.vin = self._vin()
        self.city: City = CITIES[int(rng.integers(len(CITIES)))]
        self.home = (self.city.lat + rng.normal(0, 0.12), self.city.lon + rng.normal(0, 0.18))
        self.age_days = int(rng.uniform(20, 13 * YEAR))  # at the start of the simulation
        self.first_registration_ms = self.start_ms - self.age_days * DAY_MS
        names = list(PROFILES)
        self.profile = names[int(rng.choice(len(names), p=[PROFILES[p][3] for p in names]))]
        self.connected = bool(rng.random() < cfg.connected_share)
        self.operator = CONNECTED[int(rng.integers(len(CONNECTED)))]
        self.net_garage = NET_GARAGES[int(rng.integers(len(NET_GARAGES)))]
        self.ind_garage = IND_GARAGES[int(rng.integers(len(IND_GARAGES)))]
        self.insurer = INSURERS[int(rng.integers(len(INSURERS)))]
        self.inspector = INSPECTION[int(rng.integers(len(INSPECTION)))]
        self.owner = identity(rng, self.city.country)
        self.service_km = float(rng.uniform(15_000, 30_000))
        self.manual_user = bool(rng.random() < 0.3)
        self._mileage()
        self.protos: list[Proto] = []
        self.labels: list[Label] = []
        self.transforms: list[OdoTransform] = []
        self.replays: list[Proto] = []
        self.wreck_ms: int | None = None  # honest total loss: the life ends there
        self.allow_total_loss = True
        self.reporter: str | None = None  # a fraud variant's regular reporter (a source id) ...
        self.reporter_every: int = 0  # ... and its cadence in days
        self.variant: dict[str, str] = {}  # the fraud case's variant (simulator.variants)
        self.variant_values: dict[str, float] = {}  # ... and the exact values drawn for it

    # -- the car ---------------------------------------------------------------------
    def _vin(self) -> str:
        rng = self.rng
        wmi = WMIS[int(rng.integers(len(WMIS)))]
        vds = "".join(VIN_CHARACTERS[int(c)] for c in rng.integers(0, len(VIN_CHARACTERS), 5))
        year = VIN_CHARACTERS[int(rng.integers(10, len(VIN_CHARACTERS)))]
        plant = VIN_CHARACTERS[(self.index // 1_000_000) % len(VIN_CHARACTERS)]
        return with_check_digit(f"{wmi}{vds}0{year}{plant}{self.index % 1_000_000:06d}")

    def _mileage(self) -> None:
        rng, n = self.rng, self.n
        median, weekday, weekend, _ = PROFILES[self.profile]
        self.median_km = median * float(rng.lognormal(0.0, 0.3))
        days = np.arange(n)
        start_day = self.start_ms // DAY_MS
        dow = (start_day + 3 + days) % 7  # 1970-01-01 was a Thursday
        factor = np.where(dow >= 5, weekend, weekday)
        season = 1.0 + 0.15 * np.sin(2 * np.pi * (((start_day + days) % 365.25) - 100) / 365.25)
        drift = rng.lognormal(0.0, 0.12, n // 365 + 1)[days // 365]
        km = self.median_km * factor * season * drift * rng.lognormal(0.0, 0.55, n)
        km[rng.random(n) < 0.08] = 0.0  # days the car stays parked
        self.km = km
        odo0 = self.age_days * self.median_km * 1.1 * float(rng.lognormal(0.0, 0.1))
        self.odo_start = odo0 + np.concatenate(([0.0], np.cumsum(km)))

    def odo_at(self, t_ms: np.ndarray) -> np.ndarray:
        """The true odometer (km, float) at each time.

        After the last simulated day (a repair may follow an accident of the last
        weeks), the car goes on at its mean daily distance: its odometer does not freeze.
        """
        rel = (t_ms - self.start_ms) / DAY_MS
        day = np.clip(np.floor(rel).astype(np.int64), 0, self.n - 1)
        frac = np.clip(rel - day, 0.0, 1.0)
        odo = self.odo_start[day] + frac * self.km[day]
        after: np.ndarray = np.where(rel > self.n, self.odo_start[-1] + (rel - self.n) * float(self.km.mean()), odo)
        return after

    def day_of_odo(self, km: float) -> int:
        return int(np.searchsorted(self.odo_start, km))

    def time_in_day(self, day: int, lo_h: float = 7.0, hi_h: float = 19.0) -> int:
        return self.start_ms + day * DAY_MS + int(self.rng.uniform(lo_h, hi_h) * 3_600_000)

    def near(self, spread: float, centre: tuple[float, float] | None = None) -> dict[str, float]:
        lat, lon = centre or self.home
        return {
            "lat": round(float(lat + self.rng.normal(0, spread)), 5),
            "lon": round(float(lon + self.rng.normal(0, spread * 1.5)), 5),
        }

    def add(self, proto: Proto) -> Proto:
        self.protos.append(proto)
        return proto

    # -- honest events --------------------------------------------------------------
    def generate(self) -> None:
        self.telematics()
        self.services()
        self.inspections()
        self.accidents()
        self.sales()
        self.manual_entries()
        self.reporter_readings()

    def telematics(self, operator: str | None = None) -> None:
        if not self.connected:
            return
        rng, n = self.rng, self.n
        days = np.nonzero(rng.random(n) < 0.85)[0]
        times = self.start_ms + days * DAY_MS + rng.integers(6 * 3_600_000, 22 * 3_600_000, len(days))
        spread = 0.9 if self.profile == "long_haul" else 0.05
        lats = np.round(self.home[0] + rng.normal(0, spread, len(days)), 5).tolist()
        lons = np.round(self.home[1] + rng.normal(0, spread * 1.5, len(days)), 5).tolist()
        fuel = rng.integers(5, 101, len(days)).tolist()
        firmware = f"{int(rng.integers(2, 6))}.{int(rng.integers(0, 10))}.{int(rng.integers(0, 20))}"
        source = operator or self.operator
        for t, lat, lon, f in zip(times.tolist(), lats, lons, fuel, strict=True):
            payload: dict[str, object] = {"location": {"lat": lat, "lon": lon}, "fuel_level_pct": f}
            if f % 3:
                payload["firmware"] = firmware
            self.protos.append(Proto(t, "odometer_reading", source, payload))

    def garage_for(self, t_ms: int) -> str:
        young = (t_ms - self.first_registration_ms) < 4 * YEAR * DAY_MS
        return self.net_garage if self.rng.random() < (0.85 if young else 0.35) else self.ind_garage

    def services(self) -> None:
        rng = self.rng
        last_km = self.odo_start[0] - rng.uniform(0, self.service_km)
        last_day = -int(rng.uniform(0, 365))
        while True:
            by_km = self.day_of_odo(last_km + self.service_km)
            by_time = last_day + 365 + int(rng.integers(-30, 46))
            day = min(by_km, by_time)
            if day >= self.n:
                return
            day = max(day, 0)
            t = self.time_in_day(day, 8, 18)
            source = self.garage_for(t)
            stype = SERVICE_TYPES[int(rng.choice(len(SERVICE_TYPES), p=SERVICE_P))]
            payload: dict[str, object] = {"service_type": stype, "in_network": source in NET_GARAGES}
            if rng.random() < 0.8:
                payload["items"] = list(SERVICE_ITEMS[stype])
            if rng.random() < 0.75:
                payload["cost_cents"] = int(rng.lognormal(math.log(28_000), 0.5))
            if rng.random() < 0.7:
                payload["invoice_ref"] = f"INV-{iso_date(t)[:4]}-{int(rng.integers(10**6)):06d}"
            if rng.random() < 0.6:
                payload["location"] = self.near(0.03)
            if rng.random() < 0.1:
                payload["notes"] = "customer reports noise at low speed"
            self.add(Proto(t, "maintenance", source, payload))
            last_km, last_day = float(self.odo_at(np.array([t]))[0]), day

    def inspections(self) -> None:
        rng = self.rng
        first_years = 3 if rng.random() < 0.5 else 4
        due = self.first_registration_ms + int(first_years * YEAR) * DAY_MS
        while due < self.start_ms:
            due += int(2 * YEAR) * DAY_MS
        while True:
            day = (due - self.start_ms) // DAY_MS - int(rng.integers(0, 30))
            if day >= self.n:
                return
            day = max(day, 0)
            result = ("pass", "pass_with_defects", "fail")[int(rng.choice(3, p=(0.8, 0.15, 0.05)))]
            for attempt in range(2):
                t = self.time_in_day(day, 8, 17)
                payload: dict[str, object] = {"result": result}
                if result != "pass":
                    k = int(rng.integers(1, 4))
                    payload["defects"] = [DEFECTS[int(i)] for i in rng.choice(len(DEFECTS), k, replace=False)]
                if result != "fail":
                    payload["valid_until"] = iso_date(t + int(2 * YEAR) * DAY_MS)
                if rng.random() < 0.7:
                    payload["location"] = self.near(0.03)
                self.add(Proto(t, "inspection", self.inspector, payload))
                if result != "fail" or attempt:
                    break
                day, result = day + int(rng.integers(10, 26)), "pass"
                if day >= self.n:
                    return
            due += int(2 * YEAR) * DAY_MS

    def claim_ref(self) -> str:
        return f"CLM-{self.insurer[4:7].upper()}-{int(self.rng.integers(10**7)):07d}"

    def accident(self, day: int, severity: str, total_loss: bool) -> tuple[Proto, Proto]:
        """An accident declaration and what follows: a repair, or a total-loss declaration."""
        rng = self.rng
        t = self.time_in_day(day, 6, 23)
        claim = self.claim_ref()
        damage = {"minor": 90_000, "moderate": 400_000, "severe": 1_500_000}[severity]
        payload: dict[str, object] = {"severity": severity, "claim_ref": claim}
        if rng.random() < 0.7:
            payload["location"] = self.near(0.2)
        if rng.random() < 0.8:
            payload["damage_cents"] = int(rng.lognormal(math.log(damage), 0.4))
        if rng.random() < 0.5:
            payload["description"] = f"{severity} collision reported by the policy holder"
        declared = self.add(
            Proto(t, "accident_declaration", self.insurer, payload, has_odo=rng.random() < 0.5)
        )
        later = t + int(rng.integers(3, 26)) * DAY_MS + int(rng.integers(0, 8 * 3_600_000))
        if total_loss:
            reason = "collision"
            wreck: dict[str, object] = {"claim_ref": claim, "reason": reason, "total_loss": True}
            if rng.random() < 0.5:
                wreck["location"] = self.near(0.2)
            return declared, self.add(
                Proto(later, "wreck_declaration", self.insurer, wreck, rng.random() < 0.6)
            )
        rtype = "bodywork" if severity != "minor" else REPAIR_TYPES[int(rng.choice(5, p=REPAIR_P))]
        repair: dict[str, object] = {"repair_type": rtype}
        if rng.random() < 0.8:
            repair["related_claim_ref"] = claim
        if rng.random() < 0.8:
            repair["cost_cents"] = int(rng.lognormal(math.log(damage * 0.8), 0.3))
        if rng.random() < 0.5:
            repair["location"] = self.near(0.03)
        return declared, self.add(Proto(later, "repair", self.garage_for(later), repair, rng.random() < 0.7))

    def accidents(self) -> None:
        rng = self.rng
        rate = (0.12 if self.profile == "long_haul" else 0.05) / 365.25
        for day in np.nonzero(rng.random(self.n) < rate)[0].tolist():
            severity = ("minor", "moderate", "severe")[int(rng.choice(3, p=(0.6, 0.3, 0.1)))]
            total = self.allow_total_loss and severity == "severe" and rng.random() < 0.4
            _, after = self.accident(day, severity, total)
            if total:
                self.wreck_ms = after.t
                return

    def sale(self, day: int) -> Proto:
        rng = self.rng
        new = identity(rng, self.city.country)
        payload: dict[str, object] = {"new_owner": new}
        if rng.random() < 0.9:
            payload["previous_owner"] = self.owner
        if rng.random() < 0.7:
            value = 2_500_000 * math.exp(-0.12 * (self.age_days + day) / YEAR)
            payload["sale_price_cents"] = int(value * rng.lognormal(0, 0.2)) // 100 * 100
        if rng.random() < 0.8:
            payload["country"] = self.city.country
        self.owner = new
        source = self.net_garage if rng.random() < 0.4 else MANUAL
        return self.add(Proto(self.time_in_day(day, 9, 19), "ownership_change", source, payload))

    def sales(self) -> None:
        rate = (0.06 + 0.01 * min(self.age_days / YEAR, 10)) / 365.25
        for day in np.nonzero(self.rng.random(self.n) < rate)[0].tolist():
            self.sale(day)

    def manual_entries(self) -> None:
        if not self.manual_user:
            return
        rng = self.rng
        day = int(rng.integers(0, 90))
        while day < self.n:
            self.add(Proto(self.time_in_day(day, 18, 23), "odometer_reading", MANUAL, {},
                           typo=bool(rng.random() < self.cfg.typo_rate)))  # fmt: skip
            day += int(rng.integers(45, 130))

    def reporter_readings(self) -> None:
        """Odometer readings at a fraud variant's cadence (an owner's app, a fleet's garage)."""
        if self.reporter is None or self.reporter_every <= 0:
            return
        rng, every = self.rng, self.reporter_every
        garage = self.reporter != MANUAL
        day = int(rng.integers(0, every))
        while day < self.n:
            if garage:
                payload: dict[str, object] = {
                    "service_type": "other",
                    "in_network": self.reporter in NET_GARAGES,
                }
                if rng.random() < 0.6:
                    payload["location"] = self.near(0.03)
                self.add(Proto(self.time_in_day(day, 8, 18), "maintenance", self.reporter, payload))
            else:
                self.add(Proto(self.time_in_day(day, 18, 23), "odometer_reading", MANUAL, {},
                               typo=bool(rng.random() < self.cfg.typo_rate)))  # fmt: skip
            day += max(1, round(every * float(rng.uniform(0.7, 1.3))))

    # -- rendering ------------------------------------------------------------------
    def render(self) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
        """The producer-input events (time order, replays last) and the labels."""
        protos = self.protos
        if self.wreck_ms is not None:
            protos = [p for p in protos if p.t <= self.wreck_ms]
        protos.sort(key=lambda p: p.t)
        times = np.fromiter((p.t for p in protos), np.int64, len(protos))
        odo = self.odo_at(times)
        for transform in self.transforms:
            odo = transform(times, odo)
        odo_list = np.round(odo).astype(np.int64).tolist()
        ids = uuid7s(times, self.rng)
        stamps = rfc3339_ms(times)
        events: list[dict[str, object]] = []
        by_proto: dict[int, str] = {}
        for p, km, event_id, stamp in zip(protos, odo_list, ids, stamps, strict=True):
            payload = p.payload
            if p.has_odo:
                value = p.clone_odo if p.clone_odo is not None else max(km, 0)
                if p.typo:
                    value = self._typo(value)
                payload = {"odometer_km": value, **payload}
            by_proto[id(p)] = event_id
            events.append({"event_id": event_id, "event_type": p.etype, "schema_version": 1,
                           "source_id": p.source, "vin": self.vin, "event_time": stamp,
                           "payload": payload})  # fmt: skip
            if p.typo:
                self.labels.append(Label("noise", [p], p.t, p.t, {"error": "typo", "true_km": max(km, 0)}))
        events += [
            dict(events[i]) for i in sorted({protos.index(p) for p in self.replays if id(p) in by_proto})
        ]
        labels: list[dict[str, object]] = []
        for label in self.labels:
            ids_ = [by_proto[id(p)] for p in label.events if id(p) in by_proto]
            if not ids_:
                continue
            row: dict[str, object] = {
                "kind": label.kind, "vin": self.vin, "event_ids": ids_,
                "window": {"start": rfc3339_ms(np.array([label.start_ms]))[0],
                           "end": rfc3339_ms(np.array([label.end_ms]))[0]},
                "detail": label.detail,
            }  # fmt: skip
            if label.variant is not None:
                row["variant"] = label.variant
                row["detectable"] = bool(label.detectable)
            labels.append(row)
        return events, labels

    def _typo(self, value: int) -> int:
        digits = list(str(value))
        pos = int(self.rng.integers(len(digits)))
        choices = [d for d in "0123456789" if d != digits[pos] and not (pos == 0 and d == "0")]
        if not choices:
            return value + 1
        digits[pos] = choices[int(self.rng.integers(len(choices)))]
        return int("".join(digits))
