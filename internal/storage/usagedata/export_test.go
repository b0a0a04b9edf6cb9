package usagedata

// WithProbeLimit returns q listing at most n group keys by index probes
// before it lists them from the windows in range instead.
func WithProbeLimit(q MeterQuery, n int) MeterQuery {
	q.probeLimit = n
	return q
}

// LedgerKey is ledgerKey, for the tests.
func LedgerKey(tenant, id string) ([16]byte, string) { return ledgerKey(tenant, id) }
