"""Small built-in lists the simulator draws from: places, people, makers."""

from __future__ import annotations

from typing import NamedTuple


class City(NamedTuple):
    name: str
    country: str  # ISO 3166 alpha-2
    lat: float
    lon: float


CITIES: tuple[City, ...] = (
    City("Paris", "FR", 48.8566, 2.3522),
    City("Lyon", "FR", 45.7640, 4.8357),
    City("Marseille", "FR", 43.2965, 5.3698),
    City("Berlin", "DE", 52.5200, 13.4050),
    City("Munich", "DE", 48.1351, 11.5820),
    City("Hamburg", "DE", 53.5511, 9.9937),
    City("Madrid", "ES", 40.4168, -3.7038),
    City("Barcelona", "ES", 41.3874, 2.1686),
    City("Milan", "IT", 45.4642, 9.1900),
    City("Rome", "IT", 41.9028, 12.4964),
    City("Amsterdam", "NL", 52.3676, 4.9041),
    City("Brussels", "BE", 50.8503, 4.3517),
    City("Vienna", "AT", 48.2082, 16.3738),
    City("Warsaw", "PL", 52.2297, 21.0122),
    City("Prague", "CZ", 50.0755, 14.4378),
    City("Lisbon", "PT", 38.7223, -9.1393),
    City("Stockholm", "SE", 59.3293, 18.0686),
    City("Copenhagen", "DK", 55.6761, 12.5683),
)

FIRST_NAMES: tuple[str, ...] = (
    "Anna", "Lukas", "Marie", "Jan", "Sofia", "Mateo", "Emma", "Leon", "Julia", "Pierre",
    "Camille", "Giulia", "Marco", "Lucia", "Hugo", "Elena", "Tomas", "Ines", "Oskar", "Clara",
    "Nina", "Pablo", "Eva", "Felix", "Alba", "Jonas", "Chiara", "Louis", "Marta", "Erik",
)  # fmt: skip
LAST_NAMES: tuple[str, ...] = (
    "Müller", "Martin", "Rossi", "García", "Novák", "Kowalski", "Jansen", "Dubois", "Schmidt",
    "Bernard", "Bianchi", "Fernández", "Nielsen", "Andersson", "Peeters", "Silva", "Wagner",
    "Moreau", "Romano", "López", "Dvořák", "Nowak", "de Vries", "Lambert", "Gruber", "Santos",
    "Larsen", "Fischer", "Ricci", "Weber",
)  # fmt: skip

#: World manufacturer identifiers of European makers (VIN positions 1-3).
WMIS: tuple[str, ...] = ("WVW", "WBA", "VF1", "VF3", "ZFA", "WDD", "VSS", "TMB", "YV1", "WAU", "SAL", "UU1")

DEFECTS: tuple[str, ...] = (
    "worn brake pads", "headlight alignment", "tyre tread depth", "oil leak", "exhaust corrosion",
    "wiper blades", "number plate lamp", "suspension bush play",
)  # fmt: skip

SERVICE_ITEMS: dict[str, tuple[str, ...]] = {
    "periodic_service": ("engine oil", "oil filter", "air filter", "cabin filter", "brake fluid"),
    "oil_change": ("engine oil", "oil filter"),
    "brakes": ("front brake pads", "rear brake pads", "brake discs"),
    "tyres": ("tyre fitting", "wheel balancing", "4 tyres"),
    "timing_belt": ("timing belt", "water pump", "tensioner"),
    "other": ("battery", "spark plugs", "coolant"),
}
