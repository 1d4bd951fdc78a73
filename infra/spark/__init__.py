"""A Spark standalone cluster on this machine, started from pyspark's own distribution."""
