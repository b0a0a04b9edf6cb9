// Package migrations embeds the numbered SQL files that define the
// database schema. internal/migrate applies them.
//
// Invariant: a file, once released, never changes; its checksum is
// recorded when applied and verified at every start. Fixes go in a new file.
package migrations

import "embed"

// FS holds the files NNNN_name.sql, applied in order of NNNN.
//
//go:embed *.sql
var FS embed.FS
