package biller

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"slices"
	"text/tabwriter"
	"time"

	"github.com/google/uuid"

	"github.com/usagemeter/metering/internal/cli"
	"github.com/usagemeter/metering/internal/config"
	"github.com/usagemeter/metering/internal/notify"
	"github.com/usagemeter/metering/internal/storage/webhooks"
)

// webhookCommands are `biller webhooks endpoints|deliveries|redeliver`.
var webhookCommands = []cli.Command[config.Biller]{
	cli.New("webhooks endpoints", webhooksEndpoints),
	cli.New("webhooks deliveries", webhooksDeliveries),
	cli.New("webhooks redeliver", webhooksRedeliver),
}

func init() { Commands = append(Commands, webhookCommands...) }

type webhooksEndpointsFlags struct{ Tenant, Format string }

func (f *webhooksEndpointsFlags) Bind(fs *flag.FlagSet) {
	fs.StringVar(&f.Tenant, "tenant", "", "only this tenant's endpoints")
	fs.StringVar(&f.Format, "format", "table", "table or json")
}

// webhooksEndpoints lists endpoints (never their secrets).
func webhooksEndpoints(ctx context.Context, env Env, f webhooksEndpointsFlags, args []string) error {
	if len(args) > 0 {
		return fmt.Errorf("unexpected argument %q", args[0])
	}
	pool, err := Open(ctx, env.Config.DatabaseURL, 0, env.Log)
	if err != nil {
		return err
	}
	defer pool.Close()
	es, err := webhooks.ListEndpoints(ctx, pool, f.Tenant)
	if err != nil {
		return err
	}
	if f.Format == "json" {
		return json.NewEncoder(env.Out).Encode(es)
	}
	tw := tabwriter.NewWriter(env.Out, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tTENANT\tSTATE\tURL\tKINDS\tSPEND THRESHOLDS")
	for _, e := range es {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%v\t%v\n", e.ID, e.Tenant, e.State, terminalText(e.URL, 80), e.Kinds, e.SpendThresholds)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(env.Out, "%d webhook endpoints\n", len(es))
	return nil
}

type webhooksDeliveriesFlags struct {
	Tenant, Endpoint, Status, Format string
	Limit                            int
}

func (f *webhooksDeliveriesFlags) Bind(fs *flag.FlagSet) {
	fs.StringVar(&f.Tenant, "tenant", "", "only this tenant's deliveries")
	fs.StringVar(&f.Endpoint, "endpoint", "", "only this endpoint's deliveries")
	fs.StringVar(&f.Status, "status", "", "only deliveries in this status: pending, delivered or dead")
	fs.StringVar(&f.Format, "format", "table", "table or json")
	cli.PositiveInt(fs, &f.Limit, "limit", 100, "most deliveries listed, newest first")
}

// webhooksDeliveries lists deliveries, newest first.
func webhooksDeliveries(ctx context.Context, env Env, f webhooksDeliveriesFlags, args []string) error {
	if len(args) > 0 {
		return fmt.Errorf("unexpected argument %q", args[0])
	}
	if f.Status != "" && !slices.Contains([]string{webhooks.StatusPending, webhooks.StatusDelivered, webhooks.StatusDead}, f.Status) {
		return fmt.Errorf("--status must be pending, delivered or dead; got %q", f.Status)
	}
	pool, err := Open(ctx, env.Config.DatabaseURL, 0, env.Log)
	if err != nil {
		return err
	}
	defer pool.Close()
	ds, err := webhooks.ListDeliveries(ctx, pool, webhooks.Filter{Tenant: f.Tenant, EndpointID: f.Endpoint, Status: f.Status, Limit: f.Limit})
	if err != nil {
		return err
	}
	if f.Format == "json" {
		return json.NewEncoder(env.Out).Encode(ds)
	}
	tw := tabwriter.NewWriter(env.Out, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSTATUS\tTENANT\tTYPE\tEVENT ID\tENDPOINT\tATTEMPTS\tNEXT ATTEMPT\tLAST ERROR")
	for _, d := range ds {
		last := "-"
		if d.LastError != nil {
			last = terminalText(*d.LastError, 60)
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\n", d.ID, d.Status, d.Tenant, d.EventType, d.EventID, d.EndpointID,
			d.Attempts, d.NextAttemptAt.Format(time.RFC3339), last)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(env.Out, "%d webhook deliveries\n", len(ds))
	return nil
}

type webhooksRedeliverFlags struct {
	Endpoint string
	Dead     bool
	Actor    string
}

func (f *webhooksRedeliverFlags) Bind(fs *flag.FlagSet) {
	fs.StringVar(&f.Endpoint, "endpoint", "", "with --dead: every dead delivery of this endpoint (it is made active again)")
	fs.BoolVar(&f.Dead, "dead", false, "with --endpoint: redeliver the endpoint's dead deliveries")
	fs.StringVar(&f.Actor, "actor", "", "who runs this, for the audit log (default user@host)")
}

// webhooksRedeliver runs `biller webhooks redeliver (ID... | --endpoint E --dead)`.
func webhooksRedeliver(ctx context.Context, env Env, f webhooksRedeliverFlags, args []string) error {
	ids, err := cli.IDs(args, "delivery")
	if err != nil {
		return err
	}
	if (f.Endpoint != "") != f.Dead {
		return errors.New("--endpoint and --dead go together: --endpoint ID --dead redelivers that endpoint's dead deliveries")
	}
	if f.Endpoint != "" {
		if _, err := uuid.Parse(f.Endpoint); err != nil {
			return fmt.Errorf("--endpoint must be an endpoint id (a UUID), got %q", f.Endpoint)
		}
	}
	if len(ids) == 0 && f.Endpoint == "" {
		return errors.New("name delivery ids, or --endpoint ID --dead")
	}
	pool, err := Open(ctx, env.Config.DatabaseURL, 0, env.Log)
	if err != nil {
		return err
	}
	defer pool.Close()
	if f.Endpoint != "" {
		if _, err := webhooks.GetEndpoint(ctx, pool, "", f.Endpoint); err != nil {
			return fmt.Errorf("endpoint %s: %w", f.Endpoint, err)
		}
	}
	ds, err := notify.Redeliver(ctx, pool, WebhookPolicy(env.Config), ids, f.Endpoint, cli.Audit{Actor: f.Actor}.Who(), time.Now())
	if errors.Is(err, webhooks.ErrNotFound) {
		return fmt.Errorf("no delivery %v: nothing redelivered", ids)
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(env.Out, "%d deliveries queued again (same event ids)\n", len(ds))
	return nil
}
