package biller

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/usagemeter/metering/internal/stripesync"
)

// adjustmentsCell is a row's adjustments in one CSV cell: for each,
// id:amount:counterpart:reference-in-Stripe, separated by "; ".
func adjustmentsCell(lines []stripesync.AdjustmentLine) string {
	parts := make([]string, len(lines))
	for i, l := range lines {
		parts[i] = l.ID + ":" + strconv.FormatInt(l.Amount, 10) + ":" + l.Counterpart + ":" + stripeRef(l)
	}
	return strings.Join(parts, "; ")
}

// stripeRef is what names an adjustment's counterpart in Stripe: the
// push's identifier, or the credit's balance transaction (its status
// until sent).
func stripeRef(l stripesync.AdjustmentLine) string {
	switch l.Counterpart {
	case stripesync.CounterpartCredit:
		if l.BalanceTransaction != "" {
			return l.BalanceTransaction
		}
		return l.Status
	case stripesync.CounterpartPush, stripesync.CounterpartCancellation:
		return l.Identifier
	}
	return ""
}

// writeAdjustments lists, under the table, every adjustment of the
// period beside its Stripe counterpart.
func writeAdjustments(w io.Writer, rows []stripesync.Row) error {
	n := 0
	for _, r := range rows {
		n += len(r.Adjustments)
	}
	if n == 0 {
		return nil
	}
	fmt.Fprintf(w, "%d adjustments:\n", n)
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TENANT\tMETER\tGROUP\tADJUSTMENT\tAMOUNT\tREASON\tCOUNTERPART\tVALUE\tSTRIPE\tCREDIT")
	for _, r := range rows {
		group := r.Group
		if group == "" {
			group = "-"
		}
		for _, l := range r.Adjustments {
			credit := ""
			if l.Counterpart == stripesync.CounterpartCredit {
				credit = fmt.Sprintf("%d %s (minor units)", l.CreditAmount, l.Currency)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\n", r.Tenant, r.Meter, terminalText(group, 60), l.ID, l.Amount,
				terminalText(l.Reason, 40), l.Counterpart, l.Value, stripeRef(l), credit)
		}
	}
	return tw.Flush()
}
