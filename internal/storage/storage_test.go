package storage_test

import (
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/usagemeter/metering/internal/storage"
)

// A pool, a connection and a transaction are all executors.
var (
	_ storage.Executor = (*pgxpool.Pool)(nil)
	_ storage.Executor = (*pgx.Conn)(nil)
	_ storage.Executor = pgx.Tx(nil)
)
