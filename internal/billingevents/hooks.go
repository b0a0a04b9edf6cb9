package billingevents

import (
	"context"

	"github.com/usagemeter/metering/internal/storage"
	"github.com/usagemeter/metering/internal/storage/accounts"
)

// PlanChangedOf is the plan.changed event of c: a change to no plan is
// the default plan (defaultPlan, "" when none is configured) applying.
func PlanChangedOf(c accounts.PlanChange, defaultPlan string) (Event, error) {
	p := PlanChanged{Version: c.Version, EffectiveAt: c.At.UTC(), Source: c.Source, SinceAlways: c.At.IsZero()}
	if c.From != nil {
		p.PreviousPlan = *c.From
	}
	if c.To != nil {
		p.Plan = *c.To
	} else {
		p.Plan, p.Default = defaultPlan, true
	}
	if p.SinceAlways {
		p.EffectiveAt = c.At // the zero time, not its UTC form
	}
	occurred := c.At
	if occurred.IsZero() {
		occurred = c.Now
	}
	return New(c.Tenant, occurred, p)
}

// PlanHook returns the accounts.PlanHook that queues plan.changed for
// every real plan change in the transaction that records it.
func PlanHook(defaultPlan string) accounts.PlanHook {
	return func(ctx context.Context, tx storage.Executor, c accounts.PlanChange) error {
		ev, err := PlanChangedOf(c, defaultPlan)
		if err != nil {
			return err
		}
		return Enqueue(ctx, tx, ev)
	}
}
