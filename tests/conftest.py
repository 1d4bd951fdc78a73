"""Session-wide fixtures.  Each real component has its own fixture module;
they start the component once per test session and reuse it."""

pytest_plugins: list[str] = [
    "tests.fixtures.browser",
    "tests.fixtures.chain",
    "tests.fixtures.kafka",
    "tests.fixtures.serving",
    "tests.fixtures.spark",
    # fails the session if a test reads a path outside the repository
    "tests.fixtures.standalone",
]
