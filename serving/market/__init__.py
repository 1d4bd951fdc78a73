"""The market: prices and metering's money (pricing), funds held before work (reservations), signed
receipts (receipts), billing on the chain (chain) and settlement of receipts on the Marketplace."""
