package periodclose

import (
	"context"
	"fmt"
	"math/big"
	"time"

	"github.com/usagemeter/metering/internal/billingevents"
	"github.com/usagemeter/metering/internal/storage/credits"
	"github.com/usagemeter/metering/internal/windows"
)

// ExpireGrants settles every credit grant that expired within the
// lookback (Config.Lookback months before the month of now - lateness)
// at or before the instant usage is complete up to (the least watermark
// less the lateness, and now less the lateness), and was not settled
// yet: each in its own transaction that records it in
// credit_grant_expiries and, when part of it was unused, queues
// grant.expired with that remainder. So each expiry is announced once,
// after the usage before it is counted. It answers how many it
// announced; with no Config.Usage it does nothing.
func (c *Closer) ExpireGrants(ctx context.Context) (int, error) {
	if c.cfg.Usage == nil {
		return 0, nil
	}
	now := c.cfg.Now().UTC()
	parts, err := c.watermarks(ctx)
	if err != nil {
		return 0, err
	}
	least, ok := reach(parts)
	if !ok {
		return 0, nil
	}
	to := least.Add(-c.cfg.Lateness)
	if limit := now.Add(-c.cfg.Lateness); limit.Before(to) {
		to = limit
	}
	from := windows.Month.Start(now.Add(-c.cfg.Lateness)).AddDate(0, -c.cfg.Lookback, 0)
	if !from.Before(to) {
		return 0, nil
	}
	gs, err := credits.ExpiredUnsettled(ctx, c.pool, from, to)
	if err != nil {
		return 0, err
	}
	announced := 0
	for _, g := range gs {
		unused := big.NewInt(g.Amount)
		burn, found, err := c.cfg.Usage.GrantBurn(ctx, g, g.ExpiresAt.Add(-time.Nanosecond), now)
		if err != nil {
			return announced, fmt.Errorf("the burn-down of grant %s: %w", g.ID, err)
		}
		if found {
			if !burn.Ended {
				continue // not ended as far as now goes
			}
			unused = burn.Unused
		}
		ok, err := c.settleExpiry(ctx, g, unused)
		if err != nil {
			return announced, err
		}
		if ok && unused.Sign() > 0 {
			announced++
			c.cfg.Logger.InfoContext(ctx, "credit grant expired with a remainder", "tenant", g.Tenant, "grant", g.ID, "remaining", unused.String())
		}
	}
	return announced, nil
}

// settleExpiry records g's expiry with unused left and, when unused > 0,
// queues its grant.expired event, in one transaction; false when it was
// settled already.
func (c *Closer) settleExpiry(ctx context.Context, g credits.Grant, unused *big.Int) (bool, error) {
	tx, err := c.pool.Begin(ctx)
	if err != nil {
		return false, fmt.Errorf("beginning the expiry of grant %s: %w", g.ID, err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	var evs []billingevents.Event
	if unused.Sign() > 0 {
		ev, err := billingevents.New(g.Tenant, *g.ExpiresAt, billingevents.GrantExpired{GrantID: g.ID,
			Remaining: billingevents.Amount(unused.String()), Unit: billingevents.UnitMeterUnits, ExpiredAt: *g.ExpiresAt})
		if err != nil {
			return false, err
		}
		evs = append(evs, ev)
	}
	id := ""
	if len(evs) > 0 {
		id = evs[0].ID
	}
	recorded, err := credits.SettleExpiry(ctx, tx, g, unused, id)
	if err != nil || !recorded {
		return false, err
	}
	if err := billingevents.Enqueue(ctx, tx, evs...); err != nil {
		return false, err
	}
	if err := tx.Commit(ctx); err != nil {
		return false, fmt.Errorf("committing the expiry of grant %s: %w", g.ID, err)
	}
	return true, nil
}
