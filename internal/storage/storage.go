// Package storage is the product's one way into Postgres. The packages
// under it own the tables, one writer per table, and offer named
// operations (Insert, Claim, MarkSent, ...) over an Executor, so the rest
// of the product holds no SQL: it begins a transaction where several
// operations must commit together and passes it down.
//
//	accounts     plans, plan_versions, plan_quotas, tenants, tenant_plans,
//	             tenant_billing_cycles, api_keys, meters
//	usagedata    ledger, ledger_names, ledger_overflow, ledger_batches,
//	             ledger_recorded, ledger_conflicts,
//	             conflict_alerts, usage_windows,
//	             usage_corrections, quota_breaches, spend_breaches,
//	             consumer_offsets,
//	             consumer_lost_records, meter_uniques, meter_group_keys,
//	             usage_adjustments, usage_hour_packs, usage_packed_days,
//	             usage_pack_stale, usage_pack_progress
//	deadletters  usage_dlq
//	billingdata  billing_pushes, billing_periods, stripe_webhook_events,
//	             stripe_webhook_undecodable, stripe_object_versions,
//	             stripe_meter_errors, billing_period_events, billing_credits
//	outbox       outbox
//	credits      credit_grants, credit_grant_expiries
//	auditlog     audit_log
//	anomalydata  usage_anomalies, anomaly_progress
//	webhooks     webhook_endpoints, webhook_deliveries,
//	             notification_offsets
//
// Outside this tree only internal/migrate (the schema and its
// schema_migrations table) and internal/leader (advisory locks, no table)
// speak SQL.
//
// Invariant: each table above is written by exactly the package named
// beside it, and no product package outside the storage tree, migrate and
// leader holds a SQL statement (TestOneWriterPerTable,
// TestSQLStaysInStorage scan the module).
package storage

import (
	"context"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Executor runs statements: a pool, a connection or a transaction. Every
// named operation in the storage tree takes one, so the caller decides
// whether it runs alone or inside a transaction with others.
type Executor interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults
	CopyFrom(ctx context.Context, table pgx.Identifier, columns []string, rows pgx.CopyFromSource) (int64, error)
}
