package anomaly

import (
	"encoding/json"
	"fmt"
	"time"
)

// Message types of usage.anomalies.
const (
	TypeSpike = "anomaly.spike"
	TypeDrop  = "anomaly.drop"
)

// Payload is the value of a usage.anomalies message (contract: consumers
// decode these fields, in this order; every number is a string so that
// none loses precision).
type Payload struct {
	ID     string `json:"id"`
	Type   string `json:"type"`
	Tenant string `json:"tenant"`
	Meter  string `json:"meter"`
	// Hour is the start of the episode's first anomalous hour (RFC 3339).
	Hour string `json:"hour"`
	// Observed is that hour's total, an exact integer.
	Observed string `json:"observed"`
	// Expected is the baseline's median (an integer, or one ending in .5).
	Expected string `json:"expected"`
	// Score is the robust score, 2 decimal places, rounded half away from
	// zero.
	Score string `json:"score"`
	// Sensitivity is the sensitivity the hour was judged against.
	Sensitivity string `json:"sensitivity"`
	// DetectedAt is when the loop judged the hour (RFC 3339, seconds).
	DetectedAt string `json:"detected_at"`
}

// Payload is a's message payload.
func (a Anomaly) Payload() Payload {
	typ := TypeSpike
	if a.Direction == Drop {
		typ = TypeDrop
	}
	return Payload{
		ID: a.ID, Type: typ, Tenant: a.Tenant, Meter: a.Meter,
		Hour:     a.Hour.UTC().Format(time.RFC3339),
		Observed: a.Observed.String(), Expected: Decimal(a.Expected), Score: a.Score.FloatString(2),
		Sensitivity: Decimal(a.Sensitivity), DetectedAt: a.DetectedAt.UTC().Format(time.RFC3339),
	}
}

// Message is a's usage.anomalies message value: Payload as JSON.
func (a Anomaly) Message() ([]byte, error) {
	b, err := json.Marshal(a.Payload())
	if err != nil {
		return nil, fmt.Errorf("encoding anomaly %s: %w", a.ID, err)
	}
	return b, nil
}
