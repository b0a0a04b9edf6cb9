package usagedata

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/usagemeter/metering/internal/storage"
)

// WindowAdds is usage to add to windows, as parallel columns (row i is
// element i of each). Meters name the windows' meters; the rollup passes a
// metric's name, which is the name of the metric's implicit meter (sum, no
// groups), so every row goes to a window with the empty group key. Values
// are non-negative decimal integers (they may exceed int64); Events are
// non-negative.
type WindowAdds struct {
	Tenants, Meters, Granularities []string
	Starts                         []time.Time
	Values                         []string
	Events                         []int64
}

// AddWindows adds each row of w to its window in one statement, creating
// the window at zero when it does not exist: a window only ever grows. It
// refuses a negative value or event count. It sorts w's rows in place by
// (tenant, meter, granularity, start) first, so concurrent transactions
// lock windows in one order and cannot deadlock.
func AddWindows(ctx context.Context, q storage.Executor, w *WindowAdds) error {
	if len(w.Tenants) == 0 {
		return nil
	}
	for i, v := range w.Values {
		if v == "" || v[0] == '-' || w.Events[i] < 0 {
			return fmt.Errorf("updating usage windows: %w: %q, %d events", errNegativeWindow, v, w.Events[i])
		}
	}
	windowsSort(w)
	if _, err := q.Exec(ctx, `INSERT INTO usage_windows (tenant, meter, group_key, granularity, window_start, value, events)
		SELECT t, m, '', g, s, v::numeric, e FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::text[], $6::bigint[]) AS b(t, m, g, s, v, e)
		ON CONFLICT (tenant, meter, group_key, granularity, window_start) DO UPDATE
		SET value = usage_windows.value + EXCLUDED.value, events = usage_windows.events + EXCLUDED.events, updated_at = now()`,
		w.Tenants, w.Meters, w.Granularities, w.Starts, w.Values, w.Events); err != nil {
		return fmt.Errorf("updating usage windows: %w", err)
	}
	return nil
}

var errNegativeWindow = errors.New("usage windows only grow: a negative or empty amount")

// windowsSort orders w's rows by (tenant, meter, granularity, start).
func windowsSort(w *WindowAdds) {
	idx := make([]int, len(w.Tenants))
	for i := range idx {
		idx[i] = i
	}
	slices.SortFunc(idx, func(x, y int) int {
		if c := cmp.Compare(w.Tenants[x], w.Tenants[y]); c != 0 {
			return c
		}
		if c := cmp.Compare(w.Meters[x], w.Meters[y]); c != 0 {
			return c
		}
		if c := cmp.Compare(w.Granularities[x], w.Granularities[y]); c != 0 {
			return c
		}
		return w.Starts[x].Compare(w.Starts[y])
	})
	t, m, g, s, v, c := slices.Clone(w.Tenants), slices.Clone(w.Meters), slices.Clone(w.Granularities), slices.Clone(w.Starts), slices.Clone(w.Values), slices.Clone(w.Events)
	for dst, src := range idx {
		w.Tenants[dst], w.Meters[dst], w.Granularities[dst], w.Starts[dst], w.Values[dst], w.Events[dst] = t[src], m[src], g[src], s[src], v[src], c[src]
	}
}
