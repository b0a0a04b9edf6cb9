package credits

import (
	"context"
	"fmt"
	"math/big"
	"time"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/usagemeter/metering/internal/storage"
)

// ExpiredUnsettled returns the grants that expired (not voided before
// expiring) with expires_at in [from, to) and no credit_grant_expiries
// row yet, by expires_at and id.
func ExpiredUnsettled(ctx context.Context, q storage.Executor, from, to time.Time) ([]Grant, error) {
	rows, err := q.Query(ctx, `SELECT `+prefixed("g.")+` FROM credit_grants g
		WHERE g.expires_at >= $1 AND g.expires_at < $2 AND (g.voided_at IS NULL OR g.voided_at >= g.expires_at)
			AND NOT EXISTS (SELECT 1 FROM credit_grant_expiries e WHERE e.grant_id = g.grant_id)
		ORDER BY g.expires_at, g.grant_id`, from, to)
	return collect(rows, err, "listing unsettled expired credit grants")
}

// SettleExpiry records that g expired with remaining unused, announced
// as event eventID ("" when remaining is 0: nothing announced), and
// reports whether this call recorded it (false: it was settled before;
// a concurrent writer waits for the first to commit). Run it in the
// transaction that queues the event.
func SettleExpiry(ctx context.Context, q storage.Executor, g Grant, remaining *big.Int, eventID string) (bool, error) {
	if g.ExpiresAt == nil {
		return false, fmt.Errorf("settling the expiry of grant %s: it does not expire", g.ID)
	}
	var id *string
	if eventID != "" {
		id = &eventID
	}
	tag, err := q.Exec(ctx, `INSERT INTO credit_grant_expiries (grant_id, tenant, expired_at, remaining, event_id)
		VALUES ($1, $2, $3, $4, $5) ON CONFLICT (grant_id) DO NOTHING`,
		g.ID, g.Tenant, *g.ExpiresAt, pgtype.Numeric{Int: remaining, Valid: true}, id)
	if err != nil {
		return false, fmt.Errorf("settling the expiry of grant %s: %w", g.ID, err)
	}
	return tag.RowsAffected() == 1, nil
}
