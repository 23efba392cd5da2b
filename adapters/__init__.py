"""Everything that does I/O: OCPP server, OSCP endpoint and client, InfluxDB, SQLite, HTTP API, CLI."""
