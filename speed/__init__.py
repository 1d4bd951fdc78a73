"""The speed layer: Kafka -> Apache Beam (verify, score, flag) -> real-time view, master dataset, dead letters."""

from pipelines.quiet import quiet_expected_warnings

# Before any module of the layer imports apache_beam, which logs a warning about its
# optional GCP client on import: a line the user cannot act on.
quiet_expected_warnings()
