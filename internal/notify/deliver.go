package notify

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/cenkalti/backoff/v5"
	"github.com/jackc/pgx/v5"

	"github.com/usagemeter/metering/internal/storage"
	"github.com/usagemeter/metering/internal/storage/auditlog"
	"github.com/usagemeter/metering/internal/storage/webhooks"
)

// Headers of a delivery.
const (
	HeaderSignature = "Usagemeter-Signature"
	HeaderEventID   = "Usagemeter-Event-Id"
	HeaderEventType = "Usagemeter-Event-Type"
)

// Sign returns the Usagemeter-Signature header of body sent at t:
// "t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">" with one v1 per
// secret, in the order given.
func Sign(secrets []string, t time.Time, body []byte) string {
	ts := strconv.FormatInt(t.Unix(), 10)
	var sb strings.Builder
	sb.WriteString("t=" + ts)
	for _, s := range secrets {
		mac := hmac.New(sha256.New, []byte(s))
		mac.Write([]byte(ts))
		mac.Write([]byte{'.'})
		mac.Write(body)
		sb.WriteString(",v1=" + hex.EncodeToString(mac.Sum(nil)))
	}
	return sb.String()
}

// Matches reports whether endpoint e wants event ev: its tenant, a kind
// it subscribed to, and for spend.threshold one of its thresholds, or,
// for an endpoint that set none, any threshold of the tenant's plan
// (ev.PlanThreshold).
func Matches(e webhooks.Endpoint, ev Event) bool {
	if e.Tenant != ev.Tenant || e.State == webhooks.StateDisabled || !slices.Contains(e.Kinds, ev.Type) {
		return false
	}
	if ev.Type != KindSpendThreshold {
		return true
	}
	want, ok := new(big.Rat).SetString(ev.Threshold)
	if !ok {
		return false
	}
	if len(e.SpendThresholds) == 0 {
		return ev.PlanThreshold
	}
	for _, t := range e.SpendThresholds {
		if r, ok := new(big.Rat).SetString(t); ok && r.Cmp(want) == 0 {
			return true
		}
	}
	return false
}

// Policy is how deliveries are retried.
type Policy struct {
	// Timeout bounds one attempt; success is a 2xx answer within it.
	Timeout time.Duration
	// RetryFor is how long after its creation (or redelivery) a delivery
	// is retried before it is dead.
	RetryFor time.Duration
	// FailingAfter is how long an endpoint may answer nothing but
	// failures before it is marked failing and its deliveries park.
	FailingAfter time.Duration
	// InitialInterval and MaxInterval bound the wait between attempts,
	// which doubles from InitialInterval up to MaxInterval, with ±50 %
	// jitter.
	InitialInterval, MaxInterval time.Duration
}

// DefaultPolicy: 10 s per attempt, retries for 3 days (the first after
// about 30 s, doubling up to 6 h), failing after 24 h of failures only.
var DefaultPolicy = Policy{Timeout: 10 * time.Second, RetryFor: 72 * time.Hour, FailingAfter: 24 * time.Hour,
	InitialInterval: 30 * time.Second, MaxInterval: 6 * time.Hour}

func (p Policy) withDefaults() Policy {
	d := DefaultPolicy
	for _, f := range []struct{ v, def *time.Duration }{{&p.Timeout, &d.Timeout}, {&p.RetryFor, &d.RetryFor},
		{&p.FailingAfter, &d.FailingAfter}, {&p.InitialInterval, &d.InitialInterval}, {&p.MaxInterval, &d.MaxInterval}} {
		if *f.v <= 0 {
			*f.v = *f.def
		}
	}
	return p
}

// Wait is the wait after the attempts-th failed attempt (1 for the
// first): exponential backoff with jitter (cenkalti/backoff).
func (p Policy) Wait(attempts int) time.Duration {
	p = p.withDefaults()
	b := &backoff.ExponentialBackOff{InitialInterval: p.InitialInterval, RandomizationFactor: 0.5, Multiplier: 2, MaxInterval: p.MaxInterval}
	b.Reset()
	var d time.Duration
	for range max(attempts, 1) {
		d = b.NextBackOff()
	}
	return d
}

// Deliveries returns the deliveries of ev to those of endpoints that want
// it, created at now and retried for p.RetryFor.
func (p Policy) Deliveries(ev Event, endpoints []webhooks.Endpoint, now time.Time) ([]webhooks.Delivery, error) {
	p = p.withDefaults()
	if ev.Created.IsZero() {
		ev.Created = now // a source message without its time
	}
	var out []webhooks.Delivery
	var body []byte
	for _, e := range endpoints {
		if !Matches(e, ev) {
			continue
		}
		if body == nil {
			var err error
			if body, err = ev.Body(); err != nil {
				return nil, err
			}
		}
		out = append(out, webhooks.Delivery{EndpointID: e.ID, EventID: ev.ID, EventType: ev.Type, Tenant: ev.Tenant,
			Body: string(body), CreatedAt: now, RetryUntil: now.Add(p.RetryFor)})
	}
	return out, nil
}

// Queue queues evs for the endpoints of their tenants that want them and
// returns how many deliveries were new.
func Queue(ctx context.Context, q storage.Executor, p Policy, now time.Time, evs ...Event) (int, error) {
	if len(evs) == 0 {
		return 0, nil
	}
	var tenants []string
	for _, ev := range evs {
		if !slices.Contains(tenants, ev.Tenant) {
			tenants = append(tenants, ev.Tenant)
		}
	}
	endpoints, err := webhooks.Subscribed(ctx, q, tenants)
	if err != nil {
		return 0, err
	}
	var ds []webhooks.Delivery
	for _, ev := range evs {
		d, err := p.Deliveries(ev, endpoints, now)
		if err != nil {
			return 0, err
		}
		ds = append(ds, d...)
	}
	return webhooks.Enqueue(ctx, q, ds...)
}

// Dispatcher sends due deliveries with a bounded number of workers.
type Dispatcher struct {
	DB     storage.Executor
	Policy Policy
	// Client sends; nil means one with Policy.Timeout that follows no
	// redirect (a 3xx is a failure).
	Client *http.Client
	// Workers bounds the attempts in flight (default 4); Batch the
	// deliveries claimed at once (default 4×Workers).
	Workers, Batch int
	// Now is the clock (default time.Now).
	Now func() time.Time
	Log *slog.Logger
	// OnAttempt, when set, is called after each attempt (metrics).
	OnAttempt func(webhooks.Claim, webhooks.Outcome)
}

func (d *Dispatcher) now() time.Time {
	if d.Now != nil {
		return d.Now()
	}
	return time.Now()
}

func (d *Dispatcher) client() *http.Client {
	if d.Client != nil {
		return d.Client
	}
	return &http.Client{Timeout: d.Policy.withDefaults().Timeout, CheckRedirect: func(*http.Request, []*http.Request) error {
		return http.ErrUseLastResponse
	}}
}

// RunOnce claims the deliveries due now and tries each once; it returns
// how many it tried.
func (d *Dispatcher) RunOnce(ctx context.Context) (int, error) {
	p := d.Policy.withDefaults()
	workers := d.Workers
	if workers <= 0 {
		workers = 4
	}
	batch := d.Batch
	if batch <= 0 {
		batch = 4 * workers
	}
	// Parked deliveries whose retries ran out are dead, as tried ones are.
	if _, err := webhooks.ExpireParked(ctx, d.DB, d.now()); err != nil {
		return 0, err
	}
	// The lease outlasts an attempt, so no other sender takes a claim
	// while this one still tries it.
	claims, err := webhooks.ClaimDue(ctx, d.DB, d.now(), 2*p.Timeout+time.Minute, batch)
	if err != nil || len(claims) == 0 {
		return 0, err
	}
	client := d.client()
	// Claims of one endpoint go one after another, in creation order;
	// endpoints go side by side, at most workers at once.
	var order []string
	byEndpoint := map[string][]webhooks.Claim{}
	for _, c := range claims {
		if _, ok := byEndpoint[c.EndpointID]; !ok {
			order = append(order, c.EndpointID)
		}
		byEndpoint[c.EndpointID] = append(byEndpoint[c.EndpointID], c)
	}
	sem := make(chan struct{}, workers)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var errs []error
	for _, id := range order {
		wg.Add(1)
		sem <- struct{}{}
		go func(cs []webhooks.Claim) {
			defer wg.Done()
			defer func() { <-sem }()
			for _, c := range cs {
				if err := d.attempt(ctx, client, p, c); err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
			}
		}(byEndpoint[id])
	}
	wg.Wait()
	return len(claims), errors.Join(errs...)
}

// attempt sends c once and records the outcome.
func (d *Dispatcher) attempt(ctx context.Context, client *http.Client, p Policy, c webhooks.Claim) error {
	start := d.now()
	status, err := send(ctx, client, p.Timeout, c, start)
	o := webhooks.Outcome{At: start, HTTPStatus: status}
	if err == nil {
		o.Delivered = true
	} else {
		o.Error = err.Error()
		next := start.Add(p.Wait(c.Attempts + 1))
		if next.After(c.RetryUntil) {
			o.Dead = true
		} else {
			o.Next = next
		}
	}
	if err := webhooks.Settle(ctx, d.DB, c.ID, o); err != nil {
		return err
	}
	if o.Delivered {
		if err := webhooks.Succeeded(ctx, d.DB, c.EndpointID, start); err != nil {
			return err
		}
	} else {
		failing, err := webhooks.Failed(ctx, d.DB, c.EndpointID, start, p.FailingAfter)
		if err != nil {
			return err
		}
		if d.Log != nil {
			d.Log.InfoContext(ctx, "webhook delivery failed", "delivery", c.ID, "endpoint", c.EndpointID, "event", c.EventID,
				"attempt", c.Attempts+1, "status", status, "err", o.Error, "dead", o.Dead, "endpoint_failing", failing)
		}
	}
	if d.OnAttempt != nil {
		d.OnAttempt(c, o)
	}
	return nil
}

// maxErrorText bounds the error recorded of an attempt.
const maxErrorText = 200

// send POSTs c's body, signed at now, and returns the answer's status
// (0 for none) and, unless it is a 2xx, why it failed.
func send(ctx context.Context, client *http.Client, timeout time.Duration, c webhooks.Claim, now time.Time) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.Endpoint.URL, strings.NewReader(c.Body))
	if err != nil {
		return 0, fmt.Errorf("building the request: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "usagemeter-webhooks/1")
	req.Header.Set(HeaderEventID, c.EventID)
	req.Header.Set(HeaderEventType, c.EventType)
	req.Header.Set(HeaderSignature, Sign(c.Endpoint.Secrets(now), now, []byte(c.Body)))
	resp, err := client.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return 0, fmt.Errorf("no answer within %s", timeout)
		}
		return 0, errors.New(clip(err.Error()))
	}
	defer resp.Body.Close()
	head, readErr := io.ReadAll(io.LimitReader(resp.Body, maxErrorText))
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return resp.StatusCode, fmt.Errorf("HTTP %d: %s", resp.StatusCode, clip(string(head)))
	}
	if readErr != nil && ctx.Err() != nil {
		return resp.StatusCode, fmt.Errorf("answer not complete within %s", timeout)
	}
	return resp.StatusCode, nil
}

// clip keeps the first maxErrorText bytes of s, valid UTF-8 without NUL.
func clip(s string) string {
	s = strings.ToValidUTF8(strings.ReplaceAll(s, "\x00", ""), "")
	for len(s) > maxErrorText {
		_, n := utf8.DecodeLastRuneInString(s)
		s = s[:len(s)-n]
	}
	return s
}

// Run calls RunOnce every poll until ctx ends; a failed round is logged.
func (d *Dispatcher) Run(ctx context.Context, poll time.Duration) error {
	t := time.NewTicker(poll)
	defer t.Stop()
	for {
		n, err := d.RunOnce(ctx)
		if err != nil && ctx.Err() == nil && d.Log != nil {
			d.Log.WarnContext(ctx, "webhook deliveries round failed", "err", err)
		}
		if n > 0 && err == nil {
			continue // more may be due
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// Redeliver queues deliveries ids again (and, with endpoint set, every
// dead delivery of that endpoint), due at now with p.RetryFor of retries,
// reactivates their endpoints if failing, and appends one audit row
// (webhook.redeliver, by actor) per delivery, all in one transaction. The
// event id and body are unchanged, so receivers deduplicate. It returns
// the deliveries as they were; webhooks.ErrNotFound when an id names
// none.
func Redeliver(ctx context.Context, db interface {
	Begin(context.Context) (pgx.Tx, error)
}, p Policy, ids []int64, endpoint, actor string, now time.Time) ([]webhooks.Delivery, error) {
	p = p.withDefaults()
	var out []webhooks.Delivery
	err := pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
		all := slices.Clone(ids)
		if endpoint != "" {
			dead, err := webhooks.DeadOf(ctx, tx, endpoint)
			if err != nil {
				return err
			}
			all = append(all, dead...)
			if _, err := webhooks.Reactivate(ctx, tx, endpoint, now); err != nil {
				return err
			}
		}
		slices.Sort(all)
		all = slices.Compact(all)
		var err error
		if out, err = webhooks.Redeliver(ctx, tx, all, now, now.Add(p.RetryFor)); err != nil {
			return err
		}
		if len(out) != len(all) {
			return webhooks.ErrNotFound
		}
		for _, d := range out {
			before, _ := json.Marshal(map[string]any{"status": d.Status, "attempts": d.Attempts, "event_id": d.EventID, "endpoint_id": d.EndpointID})
			after, _ := json.Marshal(map[string]any{"status": webhooks.StatusPending, "attempts": 0, "event_id": d.EventID, "endpoint_id": d.EndpointID,
				"next_attempt_at": now.UTC(), "retry_until": now.Add(p.RetryFor).UTC()})
			if _, err := auditlog.Append(ctx, tx, auditlog.Entry{Actor: actor, Action: "webhook.redeliver",
				Target: DeliveryTarget(d.ID), Before: before, After: after}); err != nil {
				return err
			}
		}
		return nil
	})
	return out, err
}

// DeliveryTarget names delivery id in the audit log.
func DeliveryTarget(id int64) string { return "webhook_delivery:" + strconv.FormatInt(id, 10) }

// EndpointTarget names endpoint id in the audit log.
func EndpointTarget(id string) string { return "webhook_endpoint:" + id }

// NewSecret returns a new signing secret: "whsec_" and 32 random bytes in
// unpadded URL-safe base64. The whole string, prefix included, is the
// HMAC key.
func NewSecret() (string, error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("making a webhook secret: %w", err)
	}
	return "whsec_" + base64.RawURLEncoding.EncodeToString(b[:]), nil
}
