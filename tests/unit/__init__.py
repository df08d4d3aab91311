"""Pure functions on scripted inputs: statistics, the sequential test, gate policy, schema and
migrations, the suite loader, shards, reports. No worker process."""
