"""The revenue ledger: durable events, attribution, returns by data source, the data-asset register."""
