package ingest_test

import (
	"bufio"
	"io"
	"net/http"
	"runtime"
	"strings"
	"testing"
)

// TestExportStreamsAMillionEvents: an export of a million counted events
// streams: the server's heap stays under a fixed bound while the client
// reads every line, whatever the result's size.
//
// The heap it bounds is the whole test process's, so it does not run in
// parallel: no parallel test of the package runs while it does.
func TestExportStreamsAMillionEvents(t *testing.T) {
	const n = 1_000_000
	e := newEnv(t, envOpts{})
	e.db.Exec(t, `INSERT INTO ledger_names (tenant, metric) VALUES ('big', 'api_calls')`)
	// Event ids that are UUIDs in ascending order: the ledger keeps such an
	// id as its key (ledger_key) with an empty id_text, and ascending keys
	// fill the ledger's index in order, so the million rows are written
	// in seconds rather than minutes.
	e.db.Exec(t, `INSERT INTO ledger (id, id_text, ref, payload_hash, value, event_time, src_partition, src_offset)
		SELECT lpad(to_hex(g), 32, '0')::uuid, '', (SELECT ref FROM ledger_names WHERE tenant = 'big' AND metric = 'api_calls'), 0, g, '2026-11-21T00:00:00Z'::timestamptz + g * interval '1 millisecond', g % 4, g
		FROM generate_series(1, $1) g`, n)
	req, err := http.NewRequest("GET", e.srv.URL+"/v1/exports/events?tenant=big&from=2026-11-21T00:00:00Z&to=2026-11-22T00:00:00Z", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+adminKey)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("%d %s", resp.StatusCode, b)
	}
	// The heap in use, sampled while the client reads (the server runs in
	// this process): it must not grow with the rows sent.
	var peak uint64
	sample := func() {
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		peak = max(peak, ms.HeapInuse)
	}
	sc := bufio.NewScanner(resp.Body)
	lines, bytes := 0, 0
	for sc.Scan() {
		lines++
		bytes += len(sc.Bytes()) + 1
		if lines == 1 && !strings.HasPrefix(sc.Text(), `{"id":"00000000-0000-0000-0000-000000000001","tenant":"big","metric":"api_calls","value":1,`) {
			t.Fatalf("first line %s", sc.Text())
		}
		if lines%100_000 == 0 {
			sample()
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("after %d lines: %v", lines, err)
	}
	if lines != n {
		t.Fatalf("%d lines, want %d", lines, n)
	}
	const bound = 64 << 20
	t.Logf("%d events, %d MB streamed; peak heap in use %d MiB", lines, bytes>>20, peak>>20)
	if peak > bound {
		t.Fatalf("peak heap in use %d MiB while streaming %d MB: over the %d MiB bound, the export is held in memory", peak>>20, bytes>>20, bound>>20)
	}
}
