package deadletters

import "github.com/jackc/pgx/v5"

// collectIDs reads a column of ids.
func collectIDs(rows pgx.Rows) ([]int64, error) {
	return pgx.CollectRows(rows, pgx.RowTo[int64])
}
