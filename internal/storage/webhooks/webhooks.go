// Package webhooks owns the tables of webhook notifications:
// webhook_endpoints (tenants' subscriptions and their signing secrets),
// webhook_deliveries (one event queued for one endpoint, with the body
// sent) and notification_offsets (how far the notification reader has
// read each partition of its topics).
//
// Invariant: an endpoint holds at most one delivery of an event id (a
// unique key on (endpoint_id, event_id), inserted with ON CONFLICT DO
// NOTHING), a delivery's body never changes once queued, and a pending
// delivery is handed to one sender at a time: Claim takes rows with FOR
// UPDATE SKIP LOCKED and moves their next_attempt_at past the lease in
// the same statement (TestEnqueueIsIdempotent, TestClaimIsExclusive).
package webhooks

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/usagemeter/metering/internal/storage"
)

// Endpoint states.
const (
	StateActive   = "active"
	StateDisabled = "disabled"
	StateFailing  = "failing"
)

// Delivery statuses.
const (
	StatusPending   = "pending"
	StatusDelivered = "delivered"
	StatusDead      = "dead"
)

// ErrNotFound is returned for an endpoint or delivery that does not exist
// (or not of the tenant named).
var ErrNotFound = errors.New("not found")

// Endpoint is one webhook_endpoints row. The secrets are never encoded.
type Endpoint struct {
	ID          string   `json:"id"`
	Tenant      string   `json:"tenant"`
	URL         string   `json:"url"`
	Description string   `json:"description"`
	Kinds       []string `json:"kinds"`
	// SpendThresholds are exact decimals of the tenant's currency,
	// ascending, as stored ("100.00" reads back as "100.00").
	SpendThresholds         []string   `json:"spend_thresholds"`
	Secret                  string     `json:"-"`
	PreviousSecret          string     `json:"-"`
	PreviousSecretExpiresAt *time.Time `json:"previous_secret_expires_at"`
	State                   string     `json:"state"`
	FailingSince            *time.Time `json:"failing_since"`
	LastSuccessAt           *time.Time `json:"last_success_at"`
	CreatedAt               time.Time  `json:"created_at"`
	UpdatedAt               time.Time  `json:"updated_at"`
}

// Secrets are the secrets that sign at now: the current one first, then
// the previous one until it expires.
func (e Endpoint) Secrets(now time.Time) []string {
	out := []string{e.Secret}
	if e.PreviousSecret != "" && e.PreviousSecretExpiresAt != nil && now.Before(*e.PreviousSecretExpiresAt) {
		out = append(out, e.PreviousSecret)
	}
	return out
}

const endpointColumns = `endpoint_id::text, tenant, url, description, kinds, spend_thresholds::text[], secret,
	coalesce(previous_secret, ''), previous_secret_expires_at, state, failing_since, last_success_at, created_at, updated_at`

func scanEndpoint(row pgx.Row) (Endpoint, error) {
	var e Endpoint
	err := row.Scan(&e.ID, &e.Tenant, &e.URL, &e.Description, &e.Kinds, &e.SpendThresholds, &e.Secret,
		&e.PreviousSecret, &e.PreviousSecretExpiresAt, &e.State, &e.FailingSince, &e.LastSuccessAt, &e.CreatedAt, &e.UpdatedAt)
	e.CreatedAt, e.UpdatedAt = e.CreatedAt.UTC(), e.UpdatedAt.UTC()
	for _, p := range []**time.Time{&e.PreviousSecretExpiresAt, &e.FailingSince, &e.LastSuccessAt} {
		if *p != nil {
			t := (*p).UTC()
			*p = &t
		}
	}
	if e.Kinds == nil {
		e.Kinds = []string{}
	}
	if e.SpendThresholds == nil {
		e.SpendThresholds = []string{}
	}
	return e, err
}

func collectEndpoints(rows pgx.Rows, err error, what string) ([]Endpoint, error) {
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Endpoint, error) { return scanEndpoint(row) })
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	return out, nil
}

// CreateEndpoint stores e (ID, Tenant, URL, Kinds, SpendThresholds,
// Secret and CreatedAt set by the caller) as active and returns it as
// stored.
func CreateEndpoint(ctx context.Context, q storage.Executor, e Endpoint) (Endpoint, error) {
	row := q.QueryRow(ctx, `INSERT INTO webhook_endpoints (endpoint_id, tenant, url, description, kinds, spend_thresholds, secret, created_at, updated_at)
		VALUES ($1, $2, $3, $4, $5, $6::numeric[], $7, $8, $8) RETURNING `+endpointColumns,
		e.ID, e.Tenant, e.URL, e.Description, e.Kinds, nonNil(e.SpendThresholds), e.Secret, e.CreatedAt)
	out, err := scanEndpoint(row)
	if err != nil {
		return Endpoint{}, fmt.Errorf("creating webhook endpoint of %s: %w", e.Tenant, err)
	}
	return out, nil
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// GetEndpoint returns tenant's endpoint id (ErrNotFound when there is
// none); an empty tenant matches any.
func GetEndpoint(ctx context.Context, q storage.Executor, tenant, id string) (Endpoint, error) {
	e, err := scanEndpoint(q.QueryRow(ctx, `SELECT `+endpointColumns+` FROM webhook_endpoints
		WHERE endpoint_id::text = $1 AND ($2 = '' OR tenant = $2)`, id, tenant))
	if errors.Is(err, pgx.ErrNoRows) {
		return Endpoint{}, ErrNotFound
	}
	if err != nil {
		return Endpoint{}, fmt.Errorf("reading webhook endpoint %s: %w", id, err)
	}
	return e, nil
}

// ListEndpoints returns tenant's endpoints by creation; an empty tenant
// lists every tenant's.
func ListEndpoints(ctx context.Context, q storage.Executor, tenant string) ([]Endpoint, error) {
	rows, err := q.Query(ctx, `SELECT `+endpointColumns+` FROM webhook_endpoints
		WHERE ($1 = '' OR tenant = $1) ORDER BY created_at, endpoint_id`, tenant)
	return collectEndpoints(rows, err, "listing webhook endpoints")
}

// Subscribed returns the endpoints of tenants that are not disabled
// (failing ones included: their deliveries queue and park), by creation.
func Subscribed(ctx context.Context, q storage.Executor, tenants []string) ([]Endpoint, error) {
	rows, err := q.Query(ctx, `SELECT `+endpointColumns+` FROM webhook_endpoints
		WHERE tenant = ANY($1) AND state <> 'disabled' ORDER BY created_at, endpoint_id`, tenants)
	return collectEndpoints(rows, err, "listing subscribed webhook endpoints")
}

// WithKind returns the endpoints, not disabled, subscribed to kind.
func WithKind(ctx context.Context, q storage.Executor, kind string) ([]Endpoint, error) {
	rows, err := q.Query(ctx, `SELECT `+endpointColumns+` FROM webhook_endpoints
		WHERE $1 = ANY(kinds) AND state <> 'disabled' ORDER BY tenant, created_at, endpoint_id`, kind)
	return collectEndpoints(rows, err, "listing webhook endpoints of "+kind)
}

// UpdateEndpoint replaces the URL, description, kinds, spend thresholds
// and state of tenant's endpoint e.ID and returns it as stored. Setting
// it active again clears its failure streak.
func UpdateEndpoint(ctx context.Context, q storage.Executor, e Endpoint, now time.Time) (Endpoint, error) {
	out, err := scanEndpoint(q.QueryRow(ctx, `UPDATE webhook_endpoints SET url = $3, description = $4, kinds = $5,
		spend_thresholds = $6::numeric[], state = $7, updated_at = $8,
		failing_since = CASE WHEN $7 = 'active' AND state <> 'active' THEN NULL ELSE failing_since END
		WHERE endpoint_id::text = $1 AND tenant = $2 RETURNING `+endpointColumns,
		e.ID, e.Tenant, e.URL, e.Description, e.Kinds, nonNil(e.SpendThresholds), e.State, now))
	if errors.Is(err, pgx.ErrNoRows) {
		return Endpoint{}, ErrNotFound
	}
	if err != nil {
		return Endpoint{}, fmt.Errorf("updating webhook endpoint %s: %w", e.ID, err)
	}
	return out, nil
}

// DeleteEndpoint deletes tenant's endpoint id and its deliveries, and
// returns it as it was.
func DeleteEndpoint(ctx context.Context, q storage.Executor, tenant, id string) (Endpoint, error) {
	out, err := scanEndpoint(q.QueryRow(ctx, `DELETE FROM webhook_endpoints WHERE endpoint_id::text = $1 AND tenant = $2
		RETURNING `+endpointColumns, id, tenant))
	if errors.Is(err, pgx.ErrNoRows) {
		return Endpoint{}, ErrNotFound
	}
	if err != nil {
		return Endpoint{}, fmt.Errorf("deleting webhook endpoint %s: %w", id, err)
	}
	return out, nil
}

// RotateSecret makes secret tenant's endpoint id's current secret and
// keeps the one it replaces valid until keepUntil.
func RotateSecret(ctx context.Context, q storage.Executor, tenant, id, secret string, keepUntil, now time.Time) (Endpoint, error) {
	out, err := scanEndpoint(q.QueryRow(ctx, `UPDATE webhook_endpoints SET previous_secret = secret, secret = $3,
		previous_secret_expires_at = $4, updated_at = $5
		WHERE endpoint_id::text = $1 AND tenant = $2 RETURNING `+endpointColumns, id, tenant, secret, keepUntil, now))
	if errors.Is(err, pgx.ErrNoRows) {
		return Endpoint{}, ErrNotFound
	}
	if err != nil {
		return Endpoint{}, fmt.Errorf("rotating the secret of webhook endpoint %s: %w", id, err)
	}
	return out, nil
}

// Succeeded records a delivery to endpoint id that succeeded at now: it
// ends the failure streak and makes a failing endpoint active again.
func Succeeded(ctx context.Context, q storage.Executor, id string, now time.Time) error {
	if _, err := q.Exec(ctx, `UPDATE webhook_endpoints SET last_success_at = $2, failing_since = NULL,
		state = CASE WHEN state = 'failing' THEN 'active' ELSE state END
		WHERE endpoint_id::text = $1`, id, now); err != nil {
		return fmt.Errorf("recording a success of webhook endpoint %s: %w", id, err)
	}
	return nil
}

// Failed records a failed delivery to endpoint id at now: it starts the
// failure streak if none is running, and marks the endpoint failing when
// the streak has lasted failingAfter. It reports whether the endpoint is
// failing now.
func Failed(ctx context.Context, q storage.Executor, id string, now time.Time, failingAfter time.Duration) (bool, error) {
	var state string
	err := q.QueryRow(ctx, `UPDATE webhook_endpoints SET failing_since = coalesce(failing_since, $2),
		state = CASE WHEN state = 'active' AND coalesce(failing_since, $2) <= $2 - make_interval(secs => $3) THEN 'failing' ELSE state END
		WHERE endpoint_id::text = $1 RETURNING state`, id, now, failingAfter.Seconds()).Scan(&state)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, nil // deleted meanwhile
	}
	if err != nil {
		return false, fmt.Errorf("recording a failure of webhook endpoint %s: %w", id, err)
	}
	return state == StateFailing, nil
}

// Delivery is one webhook_deliveries row.
type Delivery struct {
	ID            int64      `json:"id"`
	EndpointID    string     `json:"endpoint_id"`
	EventID       string     `json:"event_id"`
	EventType     string     `json:"event_type"`
	Tenant        string     `json:"tenant"`
	Body          string     `json:"-"`
	Status        string     `json:"status"`
	Attempts      int        `json:"attempts"`
	NextAttemptAt time.Time  `json:"next_attempt_at"`
	RetryUntil    time.Time  `json:"retry_until"`
	CreatedAt     time.Time  `json:"created_at"`
	LastAttemptAt *time.Time `json:"last_attempt_at"`
	LastStatus    *int       `json:"last_status"`
	LastError     *string    `json:"last_error"`
	DeliveredAt   *time.Time `json:"delivered_at"`
}

const deliveryColumns = `delivery_id, endpoint_id::text, event_id, event_type, tenant, body, status, attempts,
	next_attempt_at, retry_until, created_at, last_attempt_at, last_status, last_error, delivered_at`

func scanDelivery(row pgx.Row) (Delivery, error) {
	var d Delivery
	err := row.Scan(&d.ID, &d.EndpointID, &d.EventID, &d.EventType, &d.Tenant, &d.Body, &d.Status, &d.Attempts,
		&d.NextAttemptAt, &d.RetryUntil, &d.CreatedAt, &d.LastAttemptAt, &d.LastStatus, &d.LastError, &d.DeliveredAt)
	d.NextAttemptAt, d.RetryUntil, d.CreatedAt = d.NextAttemptAt.UTC(), d.RetryUntil.UTC(), d.CreatedAt.UTC()
	for _, p := range []**time.Time{&d.LastAttemptAt, &d.DeliveredAt} {
		if *p != nil {
			t := (*p).UTC()
			*p = &t
		}
	}
	return d, err
}

// Enqueue queues ds (EndpointID, EventID, EventType, Tenant, Body,
// CreatedAt, RetryUntil set; due at CreatedAt) and returns how many were
// new: a delivery of an event id the endpoint already has is skipped.
func Enqueue(ctx context.Context, q storage.Executor, ds ...Delivery) (int, error) {
	if len(ds) == 0 {
		return 0, nil
	}
	b := &pgx.Batch{}
	for _, d := range ds {
		b.Queue(`INSERT INTO webhook_deliveries (endpoint_id, event_id, event_type, tenant, body, next_attempt_at, retry_until, created_at)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $6) ON CONFLICT (endpoint_id, event_id) DO NOTHING`,
			d.EndpointID, d.EventID, d.EventType, d.Tenant, d.Body, d.CreatedAt, d.RetryUntil)
	}
	res := q.SendBatch(ctx, b)
	n := 0
	for range ds {
		tag, err := res.Exec()
		if err != nil {
			_ = res.Close()
			return n, fmt.Errorf("queueing webhook deliveries: %w", err)
		}
		n += int(tag.RowsAffected())
	}
	if err := res.Close(); err != nil {
		return n, fmt.Errorf("queueing webhook deliveries: %w", err)
	}
	return n, nil
}

// Claim is a delivery handed to a sender, with its endpoint.
type Claim struct {
	Delivery
	Endpoint Endpoint
}

// ClaimDue hands over at most limit pending deliveries due at now whose
// endpoint is active, oldest due first (then by id: creation order), and
// moves each one's next attempt to now+lease, so that no other sender
// takes it while this one tries (a sender that dies leaves it to be
// retried after the lease). Rows another transaction holds are skipped.
func ClaimDue(ctx context.Context, q storage.Executor, now time.Time, lease time.Duration, limit int) ([]Claim, error) {
	rows, err := q.Query(ctx, `WITH due AS (
			SELECT d.delivery_id FROM webhook_deliveries d JOIN webhook_endpoints e USING (endpoint_id)
			WHERE d.status = 'pending' AND d.next_attempt_at <= $1 AND e.state = 'active'
			ORDER BY d.next_attempt_at, d.delivery_id LIMIT $3 FOR UPDATE OF d SKIP LOCKED)
		UPDATE webhook_deliveries d SET next_attempt_at = $2 FROM due WHERE d.delivery_id = due.delivery_id
		RETURNING `+prefixedDelivery, now, now.Add(lease), limit)
	if err != nil {
		return nil, fmt.Errorf("claiming webhook deliveries: %w", err)
	}
	ds, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Delivery, error) { return scanDelivery(row) })
	if err != nil {
		return nil, fmt.Errorf("claiming webhook deliveries: %w", err)
	}
	out := make([]Claim, 0, len(ds))
	byID := map[string]Endpoint{}
	for _, d := range ds {
		e, ok := byID[d.EndpointID]
		if !ok {
			if e, err = GetEndpoint(ctx, q, "", d.EndpointID); err != nil {
				if errors.Is(err, ErrNotFound) {
					continue // deleted meanwhile, its deliveries with it
				}
				return nil, err
			}
			byID[d.EndpointID] = e
		}
		out = append(out, Claim{Delivery: d, Endpoint: e})
	}
	// Oldest due first, as the statement chose them (RETURNING has no order).
	sortClaims(out)
	return out, nil
}

const prefixedDelivery = `d.delivery_id, d.endpoint_id::text, d.event_id, d.event_type, d.tenant, d.body, d.status, d.attempts,
	d.next_attempt_at, d.retry_until, d.created_at, d.last_attempt_at, d.last_status, d.last_error, d.delivered_at`

func sortClaims(cs []Claim) {
	for i := 1; i < len(cs); i++ {
		for j := i; j > 0 && cs[j].ID < cs[j-1].ID; j-- {
			cs[j], cs[j-1] = cs[j-1], cs[j]
		}
	}
}

// Outcome is the result of one attempt.
type Outcome struct {
	At time.Time
	// HTTPStatus is the receiver's status (0: no answer).
	HTTPStatus int
	// Error says why it failed ("" on success).
	Error string
	// Delivered: a 2xx in time. Otherwise Dead says the retries are spent,
	// and Next is when to try again.
	Delivered bool
	Dead      bool
	Next      time.Time
}

// Settle records the outcome of an attempt at delivery id.
func Settle(ctx context.Context, q storage.Executor, id int64, o Outcome) error {
	status := StatusPending
	switch {
	case o.Delivered:
		status = StatusDelivered
	case o.Dead:
		status = StatusDead
	}
	var httpStatus *int
	if o.HTTPStatus != 0 {
		httpStatus = &o.HTTPStatus
	}
	var msg *string
	if o.Error != "" {
		msg = &o.Error
	}
	next := o.Next
	if next.IsZero() {
		next = o.At
	}
	if _, err := q.Exec(ctx, `UPDATE webhook_deliveries SET status = $2, attempts = attempts + 1, last_attempt_at = $3,
		last_status = $4, last_error = $5, next_attempt_at = $6,
		delivered_at = CASE WHEN $2 = 'delivered' THEN $3 ELSE delivered_at END
		WHERE delivery_id = $1 AND status = 'pending'`, id, status, o.At, httpStatus, msg, next); err != nil {
		return fmt.Errorf("recording an attempt at webhook delivery %d: %w", id, err)
	}
	return nil
}

// GetDelivery returns delivery id (ErrNotFound when there is none).
func GetDelivery(ctx context.Context, q storage.Executor, id int64) (Delivery, error) {
	d, err := scanDelivery(q.QueryRow(ctx, `SELECT `+deliveryColumns+` FROM webhook_deliveries WHERE delivery_id = $1`, id))
	if errors.Is(err, pgx.ErrNoRows) {
		return Delivery{}, ErrNotFound
	}
	if err != nil {
		return Delivery{}, fmt.Errorf("reading webhook delivery %d: %w", id, err)
	}
	return d, nil
}

// Filter selects deliveries: of an endpoint and a status when set, newest
// first, at most Limit (MaxList when 0 or above).
type Filter struct {
	Tenant, EndpointID, Status string
	Limit                      int
}

// MaxList is the most deliveries ListDeliveries answers.
const MaxList = 1000

// ListDeliveries returns the deliveries f selects, newest first.
func ListDeliveries(ctx context.Context, q storage.Executor, f Filter) ([]Delivery, error) {
	if f.Limit <= 0 || f.Limit > MaxList {
		f.Limit = MaxList
	}
	rows, err := q.Query(ctx, `SELECT `+deliveryColumns+` FROM webhook_deliveries
		WHERE ($1 = '' OR tenant = $1) AND ($2 = '' OR endpoint_id::text = $2) AND ($3 = '' OR status = $3)
		ORDER BY delivery_id DESC LIMIT $4`, f.Tenant, f.EndpointID, f.Status, f.Limit)
	if err != nil {
		return nil, fmt.Errorf("listing webhook deliveries: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Delivery, error) { return scanDelivery(row) })
	if err != nil {
		return nil, fmt.Errorf("listing webhook deliveries: %w", err)
	}
	return out, nil
}

// Redeliver queues deliveries ids again, whatever their status, due at
// now with retries until retryUntil and a fresh attempt count (the body
// and event id unchanged, so receivers deduplicate), and makes their
// endpoints active. It returns the deliveries as they were before.
func Redeliver(ctx context.Context, q storage.Executor, ids []int64, now, retryUntil time.Time) ([]Delivery, error) {
	rows, err := q.Query(ctx, `WITH old AS (SELECT `+deliveryColumns+` FROM webhook_deliveries WHERE delivery_id = ANY($1) FOR UPDATE),
		upd AS (UPDATE webhook_deliveries d SET status = 'pending', attempts = 0, next_attempt_at = $2, retry_until = $3
			FROM old WHERE d.delivery_id = old.delivery_id)
		SELECT * FROM old ORDER BY delivery_id`, ids, now, retryUntil)
	if err != nil {
		return nil, fmt.Errorf("redelivering webhook deliveries: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Delivery, error) { return scanDelivery(row) })
	if err != nil {
		return nil, fmt.Errorf("redelivering webhook deliveries: %w", err)
	}
	var endpoints []string
	for _, d := range out {
		endpoints = append(endpoints, d.EndpointID)
	}
	if _, err := q.Exec(ctx, `UPDATE webhook_endpoints SET state = 'active', failing_since = NULL, updated_at = $2
		WHERE endpoint_id::text = ANY($1) AND state = 'failing'`, endpoints, now); err != nil {
		return nil, fmt.Errorf("reactivating webhook endpoints: %w", err)
	}
	return out, nil
}

// DeadOf returns the ids of endpoint id's dead deliveries, oldest first.
func DeadOf(ctx context.Context, q storage.Executor, endpointID string) ([]int64, error) {
	rows, err := q.Query(ctx, `SELECT delivery_id FROM webhook_deliveries WHERE endpoint_id::text = $1 AND status = 'dead'
		ORDER BY delivery_id`, endpointID)
	if err != nil {
		return nil, fmt.Errorf("listing dead webhook deliveries: %w", err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return nil, fmt.Errorf("listing dead webhook deliveries: %w", err)
	}
	return ids, nil
}

// Reactivate makes endpoint id active again if it is failing (its parked
// deliveries resume) and reports whether it was.
func Reactivate(ctx context.Context, q storage.Executor, id string, now time.Time) (bool, error) {
	tag, err := q.Exec(ctx, `UPDATE webhook_endpoints SET state = 'active', failing_since = NULL, updated_at = $2
		WHERE endpoint_id::text = $1 AND state = 'failing'`, id, now)
	if err != nil {
		return false, fmt.Errorf("reactivating webhook endpoint %s: %w", id, err)
	}
	return tag.RowsAffected() == 1, nil
}

// Offsets returns the next offset to read of each partition of topic the
// reader has stored.
func Offsets(ctx context.Context, q storage.Executor, topic string) (map[int]int64, error) {
	rows, err := q.Query(ctx, `SELECT partition, next_offset FROM notification_offsets WHERE topic = $1`, topic)
	if err != nil {
		return nil, fmt.Errorf("reading notification offsets of %s: %w", topic, err)
	}
	out := map[int]int64{}
	var p int
	var o int64
	if _, err := pgx.ForEachRow(rows, []any{&p, &o}, func() error { out[p] = o; return nil }); err != nil {
		return nil, fmt.Errorf("reading notification offsets of %s: %w", topic, err)
	}
	return out, nil
}

// AdvanceOffset moves partition of topic's stored offset from from (-1:
// none stored yet) to to, and reports false when the stored offset was
// not from (another reader moved it: this one is fenced).
func AdvanceOffset(ctx context.Context, q storage.Executor, topic string, partition int, from, to int64) (bool, error) {
	var tag interface{ RowsAffected() int64 }
	var err error
	if from < 0 {
		tag, err = q.Exec(ctx, `INSERT INTO notification_offsets (topic, partition, next_offset) VALUES ($1, $2, $3)
			ON CONFLICT (topic, partition) DO NOTHING`, topic, partition, to)
	} else {
		tag, err = q.Exec(ctx, `UPDATE notification_offsets SET next_offset = $4, updated_at = now()
			WHERE topic = $1 AND partition = $2 AND next_offset = $3`, topic, partition, from, to)
	}
	if err != nil {
		return false, fmt.Errorf("storing the notification offset of %s/%d: %w", topic, partition, err)
	}
	return tag.RowsAffected() == 1, nil
}

// ExpireParked marks dead the pending deliveries whose retry budget ended
// before now while their endpoint was not active (failing or disabled:
// they were parked, never tried again), and returns how many.
func ExpireParked(ctx context.Context, q storage.Executor, now time.Time) (int64, error) {
	tag, err := q.Exec(ctx, `UPDATE webhook_deliveries d SET status = 'dead',
		last_error = coalesce(last_error || '; ', '') || 'retries ended while the endpoint was ' || e.state
		FROM webhook_endpoints e
		WHERE d.endpoint_id = e.endpoint_id AND d.status = 'pending' AND d.retry_until < $1 AND e.state <> 'active'`, now)
	if err != nil {
		return 0, fmt.Errorf("expiring parked webhook deliveries: %w", err)
	}
	return tag.RowsAffected(), nil
}
