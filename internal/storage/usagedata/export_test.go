package usagedata

// LedgerKey is ledgerKey, for the tests.
func LedgerKey(tenant, id string) ([16]byte, string) { return ledgerKey(tenant, id) }
