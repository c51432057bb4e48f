"""The job records and their keys: the contract, the key layout, the ledger (status), chunks, outputs."""
